"""Network modules and the unified model."""

from yolo_unified.nn.modules import UnifiedFPN, UnifiedHead
from yolo_unified.nn.tasks import UnifiedLoss, UnifiedModel, load_model_yaml

__all__ = "UnifiedFPN", "UnifiedHead", "UnifiedLoss", "UnifiedModel", "load_model_yaml"
