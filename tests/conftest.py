"""Tiny real artifacts for runtime and benchmark tests: ONNX graphs built with onnx.helper, an OpenVINO IR
converted from one of them. Built here so these tests do not depend on the converters."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hermetic import HERMETIC_CWD_ALLOWED, enter_hermetic, leave_hermetic

from modelport.core.files import sha256_file
from modelport.core.types import Artifact, Format, Precision, TensorSpec

IN_FEATURES = 4
CLASSES = 3


@dataclass(frozen=True)
class LinearModel:
    """A y = x @ W + b classifier saved as ONNX; ``W``/``b`` let tests compute the expected outputs."""

    path: Path
    W: np.ndarray
    b: np.ndarray

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x @ self.W + self.b


def _save_onnx(path: Path, nodes: list, inputs: list, outputs: list, initializers: list) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelport-tests")
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_linear_onnx(path: Path, batch: int | str = "batch", seed: int = 0) -> LinearModel:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    W = rng.standard_normal((IN_FEATURES, CLASSES)).astype(np.float32)
    b = rng.standard_normal(CLASSES).astype(np.float32)
    _save_onnx(
        path,
        [helper.make_node("MatMul", ["input", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, IN_FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")],
    )
    return LinearModel(path, W, b)


def make_scaled_onnx(path: Path, factor: float) -> Path:
    """logits = x[:, :3] * factor: NaN factor gives NaN outputs, 0 gives constant outputs."""
    from onnx import TensorProto, helper, numpy_helper

    return _save_onnx(
        path,
        [
            helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["head"]),
            helper.make_node("Mul", ["head", "k"], ["logits"]),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", IN_FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        [
            numpy_helper.from_array(np.array([0], np.int64), "starts"),
            numpy_helper.from_array(np.array([CLASSES], np.int64), "ends"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(np.array(factor, np.float32), "k"),
        ],
    )


def artifact_for(
    path: Path,
    fmt: Format = Format.ONNX,
    precision: Precision = Precision.FP32,
    *,
    batch: int | str = "batch",
    profile: str | None = "legacy-cpu",
    files: tuple[str, ...] = (),
) -> Artifact:
    return Artifact(
        path=path,
        format=fmt,
        precision=precision,
        inputs=(TensorSpec("input", (batch, IN_FEATURES)),),
        outputs=(TensorSpec("logits", (batch, CLASSES)),),
        profile=profile,
        sha256=sha256_file(path) if path.is_file() else "",
        size_bytes=path.stat().st_size if path.is_file() else 0,
        files=files,
    )


@pytest.fixture(scope="session")
def modelport_home() -> Path:
    """The session's $MODELPORT_HOME (trust store, trusted keys, fleet token): inside the hermetic HOME that
    ``pytest_configure`` set up. A test that needs a fresh machine sets its own."""
    return Path(os.environ["MODELPORT_HOME"])


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def linear_onnx(artifacts_dir: Path) -> LinearModel:
    return make_linear_onnx(artifacts_dir / "linear.onnx")


@pytest.fixture(scope="session")
def static_onnx(artifacts_dir: Path, linear_onnx: LinearModel) -> LinearModel:
    """The same weights as ``linear_onnx`` with the batch fixed at 2."""
    return make_linear_onnx(artifacts_dir / "linear_b2.onnx", batch=2)


@pytest.fixture(scope="session")
def nan_onnx(artifacts_dir: Path) -> Path:
    return make_scaled_onnx(artifacts_dir / "nan.onnx", float("nan"))


@pytest.fixture(scope="session")
def constant_onnx(artifacts_dir: Path) -> Path:
    return make_scaled_onnx(artifacts_dir / "zero.onnx", 0.0)


@pytest.fixture(scope="session")
def linear_ir(artifacts_dir: Path, linear_onnx: LinearModel) -> Path:
    """An FP32 OpenVINO IR of ``linear_onnx`` (saved without the default FP16 weight compression)."""
    import openvino as ov

    xml = artifacts_dir / "ir" / "linear.xml"
    xml.parent.mkdir(exist_ok=True)
    ov.save_model(ov.convert_model(str(linear_onnx.path)), str(xml), compress_to_fp16=False)
    return xml


@pytest.fixture
def labelled_data(linear_onnx: LinearModel) -> tuple[np.ndarray, np.ndarray, float]:
    """40 samples labelled by the linear model itself, then 10 labels changed: accuracy exactly 0.75."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, IN_FEATURES)).astype(np.float32)
    labels = linear_onnx.forward(x).argmax(1)
    labels[:10] = (labels[:10] + 1) % CLASSES
    return x, labels, 0.75


def pytest_configure(config: pytest.Config) -> None:
    """Before anything is collected or imported: a HOME, XDG folders, temp folder, Ray folder and current directory
    of the session's own, and no MODELPORT_*/RAY_* variable from the caller (tests/hermetic.py says why)."""
    config._modelport_hermetic = enter_hermetic()  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A test that wrote into the current directory fails the session, naming what it wrote."""
    state = getattr(session.config, "_modelport_hermetic", None)
    if state is None:
        return
    written = sorted(p.name for p in (state.root / "cwd").iterdir() if p.name not in HERMETIC_CWD_ALLOWED)
    if written:
        session.config.get_terminal_writer().line(
            f"hermetic: tests wrote into the current directory: {', '.join(written)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    state.keep = session.exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = getattr(config, "_modelport_hermetic", None)
    if state is not None:
        leave_hermetic(state)
