"""Knowledge distillation: the incoming model teaches a smaller student, which the step returns.

Loss (Hinton et al. 2015):
``alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha) · CE(student, y)``; the T² keeps the
soft-target gradients on the scale of the hard-label ones. The student is a registry architecture
(``simple-mnist-student``) or the teacher's own architecture at a width multiplier (``SimpleCNN``/MLP families).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from modelport.compression.base import CompressionData, CompressionStep, StepOutcome
from modelport.compression.finetune import Budget, accuracy, check_training, fit, parameter_counts

if TYPE_CHECKING:
    import torch
    from torch import nn

    from modelport.data.datasets import ImageDataset


@dataclass(frozen=True)
class DistillParams:
    student: str | None = None  # registry architecture, e.g. "simple-mnist-student"
    width: float | None = None  # or: the teacher's architecture with channels/hidden units × width (SimpleCNN, MLP)
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft-target term; 1 − alpha goes to the hard labels
    epochs: int = 10
    lr: float = 2e-3
    batch_size: int = 64
    warmup_epochs: float = 1.0  # linear LR warm-up from ~0 over this many epochs
    schedule: Literal["constant", "cosine"] = "cosine"  # after the warm-up


class Distillation(CompressionStep):
    """Teacher (the incoming model) → student trained on soft targets plus hard labels; returns the student."""

    name = "distill"
    Params = DistillParams

    def check(self, params: DistillParams) -> None:
        if (params.student is None) == (params.width is None):
            raise self.error(
                "give exactly one of student (an architecture name) or width (a multiplier of the teacher's width).",
                fix="set student = 'simple-mnist-student', or width = 0.5.",
            )
        if params.student is not None:
            from modelport.models import list_architectures

            if params.student not in list_architectures():
                raise self.error(f"unknown student architecture {params.student!r}. "
                                 f"Available: {', '.join(sorted(list_architectures()))}.",
                                 fix="name one of the listed architectures, e.g. simple-mnist-student.")
        if params.width is not None and not 0 < params.width <= 1:
            raise self.error(f"width must be in (0, 1], got {params.width}.", fix="set width to e.g. 0.5.")
        if not params.temperature > 0 or not math.isfinite(params.temperature):
            raise self.error(f"temperature must be positive, got {params.temperature}.", fix="set temperature to 4.")
        if not 0 <= params.alpha <= 1:
            raise self.error(f"alpha must be in [0, 1], got {params.alpha}.", fix="set alpha to e.g. 0.7.")
        if params.warmup_epochs < 0:
            raise self.error(f"warmup_epochs must be ≥ 0, got {params.warmup_epochs}.", fix="set it to 0 or 1.")
        check_training(self, epochs=params.epochs, lr=params.lr, batch_size=params.batch_size, epochs_name="epochs")
        if params.epochs < 1:
            raise self.error("epochs must be ≥ 1: the student starts untrained.", fix="set epochs to e.g. 10.")

    def apply(self, model: "nn.Module", data: CompressionData) -> StepOutcome:
        import torch
        from torch.nn import functional

        p = self.params
        dataset = data.require_dataset(self.name)
        teacher = model
        param = next(teacher.parameters(), None)
        student = self._student(teacher, dataset, data.seed)
        if param is not None:
            student.to(param.device)
        self._check_outputs(teacher, student, dataset)
        teacher_was_training = teacher.training
        teacher.eval()
        t, alpha = p.temperature, p.alpha

        def loss_fn(logits: "torch.Tensor", x: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
            if alpha == 0:
                return functional.cross_entropy(logits, y)
            with torch.no_grad():
                teacher_logits = teacher(x)
            return distillation_loss(logits, teacher_logits, y, temperature=t, alpha=alpha)

        steps_per_epoch = math.ceil(len(dataset.train_x) / p.batch_size)
        try:
            report = fit(student, dataset, loss_fn, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size, seed=data.seed,
                         budget=Budget(data.max_seconds), warmup_steps=round(p.warmup_epochs * steps_per_epoch),
                         cosine=p.schedule == "cosine")
        finally:
            teacher.train(teacher_was_training)
        teacher_params, student_params = parameter_counts(teacher), parameter_counts(student)
        teacher_acc, student_acc = accuracy(teacher, data, self.name), accuracy(student, data, self.name)
        return StepOutcome(student, {
            "student": p.student or f"{type(teacher).__name__} × {p.width}",
            "teacher_params": teacher_params,
            "student_params": student_params,
            "params_before": teacher_params,
            "params_after": student_params,
            "param_ratio": round(student_params["total"] / max(teacher_params["total"], 1), 6),
            "teacher_accuracy": teacher_acc,
            "student_accuracy": student_acc,
            "accuracy_before": teacher_acc,
            "accuracy_after": student_acc,
            "training": report.to_dict(),
        })

    def _student(self, teacher: "nn.Module", dataset: "ImageDataset", seed: int) -> "nn.Module":
        """A freshly initialised student (seeded; the global RNG is left as it was)."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.params.student is not None:
                from modelport.models import build_model

                c, h, _ = dataset.input_shape
                return build_model(self.params.student, num_classes=dataset.num_classes, in_channels=c, image_size=h)
            return narrower(teacher, self.params.width or 1.0, dataset, self)

    def _check_outputs(self, teacher: "nn.Module", student: "nn.Module", dataset: "ImageDataset") -> None:
        import torch

        param = next(teacher.parameters(), None)
        x = torch.from_numpy(dataset.train_x[:2].copy())
        if param is not None:
            x = x.to(param.device)
        shapes = []
        for who, net in (("teacher", teacher), ("student", student)):
            was_training = net.training
            net.eval()
            try:
                with torch.no_grad():
                    shapes.append(tuple(net(x).shape))
            except RuntimeError as exc:
                c, h, w = dataset.input_shape
                raise self.error(f"the {who} does not accept dataset '{dataset.name}' images ({c}×{h}×{w}): "
                                 f"{str(exc).splitlines()[0]}",
                                 fix="use a student built for the teacher's input size, and the teacher's dataset.") \
                    from exc
            finally:
                net.train(was_training)
        if shapes[0] != shapes[1]:
            raise self.error(f"the teacher outputs {shapes[0]} but the student outputs {shapes[1]}.",
                             fix="pick a student with the teacher's number of classes.")


def distillation_loss(
    student_logits: "torch.Tensor", teacher_logits: "torch.Tensor", labels: "torch.Tensor", *, temperature: float,
    alpha: float,
) -> "torch.Tensor":
    """``alpha·T²·KL(p_teacher^T ‖ p_student^T) + (1 − alpha)·CE(student, labels)``, batch mean."""
    from torch.nn import functional

    t = temperature
    soft = functional.kl_div(functional.log_softmax(student_logits / t, dim=1),
                             functional.log_softmax(teacher_logits.detach() / t, dim=1),
                             reduction="batchmean", log_target=True)
    return alpha * t * t * soft + (1 - alpha) * functional.cross_entropy(student_logits, labels)


def narrower(teacher: "nn.Module", width: float, dataset: "ImageDataset", step: CompressionStep) -> "nn.Module":
    """The teacher's architecture (``SimpleCNN``, ``LeNet300100``) with every hidden width × ``width``, untrained."""
    from torch import nn

    from modelport.models.simple import LeNet300100, SimpleCNN

    def scaled(n: int) -> int:
        return max(1, round(n * width))

    c, h, _ = dataset.input_shape
    if isinstance(teacher, SimpleCNN):
        convs = [m for m in teacher.features if isinstance(m, nn.Conv2d)]
        linears = [m for m in teacher.classifier if isinstance(m, nn.Linear)]
        return SimpleCNN([scaled(m.out_channels) for m in convs], scaled(linears[0].out_features),
                         num_classes=linears[-1].out_features, in_channels=c, image_size=h)
    if isinstance(teacher, LeNet300100):
        linears = [m for m in teacher.classifier if isinstance(m, nn.Linear)]
        student = LeNet300100(num_classes=linears[-1].out_features, in_channels=c, image_size=h)
        widths = [scaled(m.out_features) for m in linears[:-1]]
        dims = [linears[0].in_features, *widths, linears[-1].out_features]
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.ReLU(inplace=True))
        student.classifier = nn.Sequential(*layers)
        return student
    raise step.error(
        f"width multipliers work for the simple-* CNNs and lenet-300-100, not {type(teacher).__name__}.",
        fix="name a student architecture instead (student = '…', see `modelport list`).",
    )
