"""Knowledge distillation: ``distill`` trains a smaller student on the teacher's softened outputs.

The teacher is the incoming model. The student is ``Context.student`` (deep-copied, trained from its
current weights) or a width-scaled copy of the teacher: for the zoo's ``DigitsCNN`` a
``DigitsCNN(width=round(teacher_width * width))``; for any other model a copy of the teacher shrunk
by torch-pruning channel pruning (ratio ``1 - width``) whose weights are then re-initialized, so the
student starts fresh. Loss (Hinton et al.)::

    alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)

Accuracies are measured on held-out data: ``Context.calibration`` when it has labels, otherwise the
last 20 % of ``Context.train``, which is then not used for training (``accuracy_on`` says which).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from edgeprobe.compress import Context, Dataset, Param, Step, count_params, recipe
from edgeprobe.errors import UsageError

HOLDOUT_FRACTION = 0.2


def _reinit(model: nn.Module) -> None:
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


def make_student(teacher: nn.Module, width: float, ctx: Context) -> tuple[nn.Module, str]:
    """A fresh width-scaled student of ``teacher``; returns it and how it was made."""
    from edgeprobe.models.zoo import DigitsCNN

    if isinstance(teacher, DigitsCNN):
        first = next(m for m in teacher.modules() if isinstance(m, nn.Conv2d))
        w = max(1, round(first.out_channels * width))
        return DigitsCNN(width=w), f"DigitsCNN(width={w})"
    student = copy.deepcopy(teacher)
    if width < 1.0:
        from edgeprobe.compress.prune import channel_prune

        try:
            channel_prune(student, tuple(ctx.example_inputs), 1.0 - width)
        except Exception as exc:
            raise UsageError(f"distill: cannot build a width-{width} student from this teacher with torch-pruning "
                             f"({type(exc).__name__}: {exc}); pass a student (Context.student)") from exc
    _reinit(student)
    return student, f"teacher channel-pruned to width {width}, re-initialized"


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, T: float,
            alpha: float) -> torch.Tensor:
    kd = F.kl_div(F.log_softmax(student_logits / T, dim=1), F.softmax(teacher_logits / T, dim=1),
                  reduction="batchmean")
    return alpha * T * T * kd + (1.0 - alpha) * F.cross_entropy(student_logits, y)


@recipe("distill", kind="module",
        help="knowledge distillation into a smaller student (given, or a width-scaled copy of the teacher)",
        params=[Param("T", 4.0, "softmax temperature"),
                Param("alpha", 0.7, "weight of the KD term (1 - alpha: cross-entropy on the labels)"),
                Param("width", 0.5, "width scale of the default student (ignored with Context.student)"),
                Param("epochs", 15, "training epochs", int),
                Param("lr", 1e-2, "Adam learning rate")])
def distill(teacher: nn.Module, ctx: Context, T: float = 4.0, alpha: float = 0.7, width: float = 0.5,
            epochs: int = 15, lr: float = 1e-2) -> tuple[nn.Module, Step]:
    from edgeprobe.compress.data import accuracy, train_classifier

    if ctx.train is None or ctx.train.y is None:
        raise UsageError("distill needs labelled training data (Context.train with labels, e.g. --train-data) "
                         "to train the student on")
    if T <= 0:
        raise UsageError(f"distill: T must be > 0, got {T}")
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"distill: alpha must be in [0, 1], got {alpha}")
    if ctx.student is None and not 0.0 < width <= 1.0:
        raise UsageError(f"distill: width must be in (0, 1], got {width}")
    if epochs < 0:
        raise UsageError(f"distill: epochs must be >= 0, got {epochs}")

    if ctx.calibration is not None and ctx.calibration.y is not None:
        train, held_out = ctx.train, ctx.calibration
        accuracy_on = f"calibration data ({len(held_out)} samples)"
    else:
        n = len(ctx.train)
        n_hold = int(n * HOLDOUT_FRACTION)
        if n_hold < 1 or n - n_hold < 1:
            raise UsageError(f"distill: {n} training samples are too few to hold out {HOLDOUT_FRACTION:.0%} for "
                             "evaluation; give more, or labelled calibration data")
        train = Dataset(ctx.train.x[:n - n_hold], ctx.train.y[:n - n_hold])
        held_out = Dataset(ctx.train.x[n - n_hold:], ctx.train.y[n - n_hold:])
        accuracy_on = f"held-out last {HOLDOUT_FRACTION:.0%} of the training data ({n_hold} samples, not trained on)"

    teacher.eval()
    if ctx.student is not None:
        student, made = copy.deepcopy(ctx.student), "given (Context.student)"
    else:
        student, made = make_student(teacher, width, ctx)
    student.eval()
    ctx.log(f"distill: student {made}, {count_params(student)} params; teacher {count_params(teacher)} params")

    teacher_acc = accuracy(teacher, held_out)
    untrained_acc = accuracy(student, held_out)

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = teacher(x)
        return kd_loss(model(x), t, y, T, alpha)

    train_classifier(student, train, epochs=epochs, lr=lr, loss_fn=loss_fn, seed=ctx.seed)
    student_acc = accuracy(student, held_out)
    summary = {
        "teacher_accuracy": teacher_acc,
        "student_accuracy": student_acc,
        "untrained_student_accuracy": untrained_acc,
        "accuracy_on": accuracy_on,
        "teacher_params": count_params(teacher),
        "student_params": count_params(student),
        "student": made,
        "train_samples": len(train),
    }
    notes = ()
    if ctx.train_fn is not None:
        notes = ("distill trains with its own KD loop; Context.train_fn was not used",)
    return student.eval(), Step("", {}, summary, notes)
