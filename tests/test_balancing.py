"""Loss balancing methods on toy two-task problems whose behaviour is known in closed form."""

import math

import pytest
import torch

from yolo_unified.balancing import BALANCERS, build_balancer, gradient_stats, gramian_stats
from yolo_unified.balancing.base import kept_graphs, task_jacobians

TASKS = ["a", "b"]


def build(name: str, tasks: list[str] = TASKS, **settings) -> torch.nn.Module:
    """`build_balancer`, skipping methods whose optional TorchJD solvers are not installed."""
    try:
        return build_balancer(name, tasks, **settings)
    except ImportError as e:
        pytest.skip(str(e))


def linear_losses(theta: torch.Tensor, g1: list[float], g2: list[float]) -> dict[str, torch.Tensor]:
    """Two losses linear in `theta`, whose gradients are exactly `g1` and `g2`."""
    return {"a": torch.tensor(g1) @ theta, "b": torch.tensor(g2) @ theta}


class TwoHeads(torch.nn.Module):
    """A shared trunk and one linear head per task, regressing fixed random targets."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(8, 1) for t in TASKS})
        self.x, self.y = torch.randn(16, 4), torch.randn(16, 2)

    def losses(self, scale_b: float = 1.0) -> dict[str, torch.Tensor]:
        """Each task's MSE; task b's multiplied by `scale_b`."""
        features = self.trunk(self.x)
        mse = {
            t: torch.nn.functional.mse_loss(self.heads[t](features)[:, 0], self.y[:, i]) for i, t in enumerate(TASKS)
        }
        return {"a": mse["a"], "b": scale_b * mse["b"]}


@pytest.mark.parametrize("name", list(BALANCERS))
def test_every_method_runs_one_step_and_heads_get_only_their_own_gradient(name):
    model = TwoHeads()
    shared = list(model.trunk.parameters())
    balancer = build(name)
    assert balancer.kind in ("loss", "gradient")

    def step(scale_b: float) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], dict[str, float]]:
        model.zero_grad(set_to_none=True)
        total, weights = balancer.combine(model.losses(scale_b), shared)
        if balancer.kind == "loss":
            assert total.ndim == 0 and total.requires_grad
            total.backward()
        else:
            assert total is None
        return (
            model.heads["a"].weight.grad.clone(),
            model.heads["b"].weight.grad.clone(),
            [p.grad for p in shared],
            weights,
        )

    head_a, head_b, shared_grads, weights = step(1.0)
    assert list(weights) == TASKS and all(math.isfinite(w) for w in weights.values())
    assert all(g is not None and g.isfinite().all() for g in shared_grads) and any(
        g.abs().sum() > 0 for g in shared_grads
    )
    head_a_again, head_b_again, _, _ = step(3.0)  # only task b's loss changes
    torch.testing.assert_close(head_a_again, head_a)  # head a sees task a's gradient alone
    torch.testing.assert_close(head_b_again, 3 * head_b)


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="pcgard") as error:
        build_balancer("pcgard", TASKS)
    assert all(name in str(error.value) for name in BALANCERS)
    expected = {"fixed", "uncertainty", "dwa", "gradnorm", "pcgrad", "rlw", "cagrad", "imtlg", "nashmtl", "alignedmtl"}
    assert expected | {"upgrad", "mgda"} == set(BALANCERS)


def test_fixed_weights_and_their_validation():
    total, weights = build("fixed", weights={"b": 0.5}).combine({"a": torch.tensor(2.0), "b": torch.tensor(4.0)}, [])
    assert weights == {"a": 1.0, "b": 0.5} and total.item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="weights.b is -1.0"):
        build_balancer("fixed", TASKS, weights={"b": -1})
    with pytest.raises(ValueError, match="every task weight is 0"):
        build_balancer("fixed", TASKS, weights={"a": 0, "b": 0})
    with pytest.raises(ValueError, match="unknown tasks"):
        build_balancer("fixed", TASKS, weights={"c": 1})


def test_uncertainty_weights_tend_to_the_inverse_loss_scale():
    balancer = build("uncertainty")
    optimizer = torch.optim.Adam(balancer.parameters(), lr=0.05)
    losses = {"a": torch.tensor(10.0, requires_grad=True), "b": torch.tensor(0.1, requires_grad=True)}  # with graphs
    for _ in range(300):
        optimizer.zero_grad()
        total, weights = balancer.combine(losses, [])
        total.backward()
        optimizer.step()
    assert weights["a"] == pytest.approx(1 / 10.0, rel=0.05)
    assert weights["b"] == pytest.approx(1 / 0.1, rel=0.05)


def test_dwa_follows_its_formula_on_a_loss_history():
    balancer = build("dwa", temp=2.0)
    losses = {"a": torch.tensor(3.0), "b": torch.tensor(5.0)}
    assert balancer.combine(losses, [])[1] == {"a": 1.0, "b": 1.0}  # epoch 0
    balancer.epoch_end({"a": 2.0, "b": 1.0})
    assert balancer.combine(losses, [])[1] == {"a": 1.0, "b": 1.0}  # epoch 1
    balancer.epoch_end({"a": 1.0, "b": 1.0})  # ratios L(e-1) / L(e-2): a 0.5, b 1.0
    total, weights = balancer.combine(losses, [])
    ea, eb = math.exp(0.5 / 2), math.exp(1.0 / 2)
    assert weights["a"] == pytest.approx(2 * ea / (ea + eb)) and weights["b"] == pytest.approx(2 * eb / (ea + eb))
    assert total.item() == pytest.approx(3 * weights["a"] + 5 * weights["b"])
    balancer.epoch_end({"a": 0.5, "b": 2.0})  # ratios: a 0.5, b 2.0
    resumed = build("dwa", temp=2.0)
    resumed.load_state_dict(balancer.state_dict())
    ea, eb = math.exp(0.5 / 2), math.exp(2.0 / 2)
    assert resumed.combine(losses, [])[1]["b"] == pytest.approx(2 * eb / (ea + eb))


def test_gradnorm_brings_the_weighted_gradient_norms_together():
    model = TwoHeads()
    model.requires_grad_(False)
    layer = model.trunk[2].weight  # the last shared layer's weights: what GradNorm measures
    layer.requires_grad_(True)
    losses = model.losses(scale_b=10.0)  # the network is fixed: every step sees these losses
    norms = gradient_stats(losses, [layer])

    def spread(weights: dict[str, float]) -> float:
        weighted = [weights[t] * norms[f"grad_norm/{t}"] for t in TASKS]
        return max(weighted) / min(weighted)

    balancer = build("gradnorm", alpha=1.5)
    optimizer = torch.optim.Adam(balancer.parameters(), lr=0.01)
    assert spread({"a": 1.0, "b": 1.0}) > 3
    for _ in range(300):
        optimizer.zero_grad()
        _, weights = balancer.combine(losses, [layer])
        optimizer.step()
    assert spread(weights) < 1.05
    assert sum(weights.values()) == pytest.approx(2.0)


def test_pcgrad_matches_the_textbook_projection():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # conflicting: g1 . g2 = -1
    # by hand: each gradient loses its component along the other one
    g1_pc = g1 - (g1 @ g2) / (g2 @ g2) * g2  # (0.5, 0.5)
    g2_pc = g2 - (g2 @ g1) / (g1 @ g1) * g1  # (0, 1)
    assert g1_pc @ g2 >= 0 and g2_pc @ g1 >= 0
    theta = torch.nn.Parameter(torch.zeros(2))
    theta.grad = torch.ones(2)  # an earlier micro-batch's gradient: the aggregate adds to it
    total, weights = build("pcgrad").combine(linear_losses(theta, g1.tolist(), g2.tolist()), [theta])
    assert total is None
    torch.testing.assert_close(theta.grad, torch.ones(2) + g1_pc + g2_pc)  # (1.5, 2.5)
    assert weights == pytest.approx({"a": 2.0, "b": 1.5})  # g1_pc + g2_pc = 2 g1 + 1.5 g2
    aggregate = theta.grad - 1
    assert aggregate @ g1 >= 0 and aggregate @ g2 >= 0
    theta.grad = None  # without conflict PCGrad is the plain sum
    build("pcgrad").combine(linear_losses(theta, [1.0, 0.0], [1.0, 1.0]), [theta])
    torch.testing.assert_close(theta.grad, torch.tensor([2.0, 1.0]))


def test_rlw_weights_are_positive_random_and_sum_to_one():
    theta = torch.nn.Parameter(torch.zeros(2))
    balancer = build("rlw")
    draws = []
    for _ in range(20):
        theta.grad = None
        _, weights = balancer.combine(linear_losses(theta, [1.0, 0.0], [0.0, 1.0]), [theta])
        assert all(w > 0 for w in weights.values()) and sum(weights.values()) == pytest.approx(1.0)
        torch.testing.assert_close(theta.grad, torch.tensor([weights["a"], weights["b"]]))
        draws.append(weights["a"])
    assert len(set(draws)) > 1


def test_gradient_stats_norms_and_cosines():
    theta = torch.nn.Parameter(torch.zeros(2))
    stats = gradient_stats(linear_losses(theta, [1.0, 0.0], [-1.0, 1.0]), [theta])
    assert stats == pytest.approx({"grad_norm/a": 1.0, "grad_norm/b": math.sqrt(2), "cos/a-b": -1 / math.sqrt(2)})
    assert theta.grad is None
    absent = gradient_stats({"a": torch.tensor([1.0, 0.0]) @ theta, "b": torch.zeros(())}, [theta])
    assert absent["grad_norm/a"] == 1.0 and math.isnan(absent["grad_norm/b"]) and math.isnan(absent["cos/a-b"])


def three_linear_losses(theta: torch.Tensor, rows: list[list[float]], absent: str) -> dict[str, torch.Tensor]:
    """Linear losses of tasks a, b, c with gradients `rows`; task `absent` has no batch (a zero loss, no graph)."""
    losses = {t: torch.tensor(g) @ theta for t, g in zip("abc", rows, strict=True)}
    return {**losses, absent: torch.zeros(())}


@pytest.mark.parametrize("name", [n for n, b in BALANCERS.items() if b.kind == "gradient"])
def test_gradient_methods_aggregate_only_the_tasks_in_the_step(name):
    """A task without a batch (task_share) is left out, not read as a zero gradient: with the other two tasks the
    update is the aggregate of those two, and a step with one task takes its gradient as it is."""
    rows = [[1.0, 0.0, 0.0], [-1.0, 1.0, 0.5], [0.0, 2.0, -1.0]]
    theta = torch.nn.Parameter(torch.zeros(3))
    two_tasks = build(name, ["a", "b"])
    if name == "rlw":
        torch.manual_seed(0)
    _, pair_weights = two_tasks.combine(linear_losses(theta, rows[0], rows[1]), [theta])
    expected, theta.grad = theta.grad, None
    three_tasks = build(name, ["a", "b", "c"])
    if name == "rlw":
        torch.manual_seed(0)
    _, weights = three_tasks.combine(three_linear_losses(theta, rows, absent="c"), [theta])
    torch.testing.assert_close(theta.grad, expected)
    assert weights == pytest.approx({**pair_weights, "c": 0.0})
    theta.grad = None
    losses = {"a": torch.zeros(()), "b": torch.zeros(()), "c": torch.tensor(rows[2]) @ theta}
    _, weights = three_tasks.combine(losses, [theta])
    torch.testing.assert_close(theta.grad, torch.tensor(rows[2]))
    assert weights == {"a": 0.0, "b": 0.0, "c": 1.0}


def test_uncertainty_leaves_the_log_variance_of_a_task_without_a_batch_alone():
    theta = torch.nn.Parameter(torch.zeros(3))
    balancer = build("uncertainty", ["a", "b", "c"])
    total, _ = balancer.combine(three_linear_losses(theta, [[1.0] * 3] * 3, absent="b"), [theta])
    total.backward()
    assert balancer.log_vars.grad.tolist() == [1.0, 0.0, 1.0]  # d(exp(-s) L + s)/ds at s = 0, L = theta . g = 0


def test_gradnorm_compares_the_tasks_in_the_step():
    """GradNorm with a task missing from some steps: the weights move only in steps with two tasks or more, and a
    task's initial loss is its loss in its first step."""
    model = TwoHeads()
    layer = model.trunk[2].weight
    balancer = build("gradnorm", alpha=1.5)
    losses = model.losses(scale_b=10.0)
    _, weights = balancer.combine({"a": losses["a"], "b": torch.zeros(())}, [layer])
    assert balancer.weights.grad is None and weights == {"a": 1.0, "b": 1.0}
    assert balancer.initial_losses[0] == losses["a"].detach() and balancer.initial_losses[1].isnan()
    balancer.combine(model.losses(scale_b=10.0), [layer])
    assert balancer.initial_losses[1] == losses["b"].detach()
    assert balancer.weights.grad is not None and balancer.weights.grad.abs().sum() > 0


def test_each_task_graph_is_freed_after_its_last_backward_pass():
    """Tasks with their own forward pass free their graph at once (memory as a loss-level step); tasks of one forward
    pass keep it for the later ones; the Jacobians are the same either way."""
    model = TwoHeads()
    shared = list(model.trunk.parameters())
    together = model.losses()  # one forward pass for both tasks
    apart = {t: model.losses()[t] for t in TASKS}  # a forward pass per task
    assert kept_graphs(list(together.values()), [0, 1]) == {0}
    assert kept_graphs(list(apart.values()), [0, 1]) == set()
    expected = task_jacobians(list(model.losses().values()), shared)  # autograd.grad, graph kept
    for losses in (together, apart):
        got = task_jacobians(list(losses.values()), shared, into_others=True)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e)
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            losses["a"].backward()  # freed: a second pass through it fails


@pytest.mark.parametrize("name", ["upgrad", "pcgrad"])
def test_gradient_methods_keep_the_gradients_gramian_for_the_diagnostics(name):
    theta = torch.zeros(2, requires_grad=True)
    balancer = build(name)
    expected = gradient_stats(linear_losses(theta, [1.0, 0.0], [-1.0, 1.0]), [theta])
    balancer.combine(linear_losses(theta, [1.0, 0.0], [-1.0, 1.0]), [theta])
    assert gramian_stats(balancer.tasks, balancer.gramian, balancer.live) == pytest.approx(expected)
    balancer.combine({"a": torch.tensor([1.0, 0.0]) @ theta, "b": torch.zeros(())}, [theta])  # b without a batch
    absent = gramian_stats(balancer.tasks, balancer.gramian, balancer.live)
    assert absent["grad_norm/a"] == 1.0 and math.isnan(absent["grad_norm/b"]) and math.isnan(absent["cos/a-b"])
