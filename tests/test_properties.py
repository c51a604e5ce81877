"""Property tests (hypothesis): parsers of files that come from elsewhere raise modelport's own errors on random
and malformed input, never a KeyError, TypeError, OverflowError or a crash."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modelport.bundle.manifest import BundleManifest
from modelport.bundle.safe_tar import clean_member_name, safe_extract
from modelport.bundle.verify import verify
from modelport.core.manifest import Manifest
from modelport.errors import ModelportError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

nasty = st.sampled_from([
    float("inf"), float("-inf"), float("nan"), 1e308, -1, 0, 2**64, True, "", "\x00", "a\x00b", "../x", "/etc/passwd",
    "C:\\x", "batch", "fp32", "onnx", [], {}, None,
])
json_scalars = st.one_of(
    nasty, st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)

_GOOD_ARTIFACT = {
    "path": "legacy-cpu/fp32/model.onnx", "format": "onnx", "precision": "fp32", "profile": "legacy-cpu",
    "inputs": [{"name": "input", "shape": ["batch", 4], "dtype": "float32"}],
    "outputs": [{"name": "logits", "shape": ["batch", 3], "dtype": "float32"}],
    "files": ["model.onnx"], "recipe": [],
    "preprocessing": {"image_size": [28, 28], "channels": 1, "mean": [0.0], "std": [1.0]},
}
_GOOD_BUNDLE = {
    "schema": "modelport.bundle", "schema_version": 1,
    "profile": {"name": "legacy-cpu", "runtime": "onnxruntime", "device": "CPU"},
    "artifacts": [_GOOD_ARTIFACT], "samples": {"path": "samples.npz"}, "class_labels": ["a", "b", "c"],
    "files": [{"path": "legacy-cpu/fp32/model.onnx", "sha256": "0" * 64, "size": 10},
              {"path": "samples.npz", "sha256": "1" * 64, "size": 10}],
}
_GOOD_CONVERT = {
    "schema": "modelport.manifest", "schema_version": 1, "artifacts": [_GOOD_ARTIFACT],
    "model": {"arch": "simple-mnist"}, "dataset": {"name": "digits"}, "environment": {"python": "3.11"},
    "preprocessing": _GOOD_ARTIFACT["preprocessing"], "created": "today",
}


def _paths(d: object) -> list[tuple]:
    """Every key path into a nested JSON document."""
    out: list[tuple] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out.append((k,))
            out += [(k, *p) for p in _paths(v)]
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.append((i,))
            out += [(i, *p) for p in _paths(v)]
    return out


def _mutate(doc: dict, path: tuple, value: object, delete: bool) -> dict:
    doc = json.loads(json.dumps(doc))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return doc


def _only_modelport_errors(fn, *args) -> None:
    try:
        fn(*args)
    except ModelportError:
        pass


# ------------------------------------------------------------------------------------------------ manifests


@SETTINGS
@given(doc=json_values)
def test_convert_manifest_from_random_json(doc: object) -> None:
    _only_modelport_errors(Manifest.from_dict, doc, Path("/tmp/x"))
    _only_modelport_errors(Manifest.from_dict, {"schema": "modelport.manifest", "schema_version": 1,
                                                "artifacts": doc}, Path("/tmp/x"))


@settings(max_examples=250, deadline=None)
@given(data=st.data(), delete=st.booleans())
def test_convert_manifest_with_one_field_broken(data: st.DataObject, delete: bool) -> None:
    path = data.draw(st.sampled_from(_paths(_GOOD_CONVERT)))
    doc = _mutate(_GOOD_CONVERT, path, data.draw(json_values), delete)
    _only_modelport_errors(Manifest.from_dict, doc, Path("/tmp/x"))


@SETTINGS
@given(blob=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_convert_manifest_file_of_random_bytes(tmp_path: Path, blob: bytes) -> None:
    (tmp_path / "manifest.json").write_bytes(blob)
    _only_modelport_errors(Manifest.read, tmp_path)


@SETTINGS
@given(doc=json_values)
def test_bundle_manifest_from_random_json(doc: object) -> None:
    _only_modelport_errors(BundleManifest.from_dict, doc, Path("/tmp/b"))
    _only_modelport_errors(BundleManifest.from_dict, {**_GOOD_BUNDLE, "artifacts": doc}, Path("/tmp/b"))
    _only_modelport_errors(BundleManifest.from_dict, {**_GOOD_BUNDLE, "files": doc}, Path("/tmp/b"))


@settings(max_examples=250, deadline=None)
@given(data=st.data(), delete=st.booleans())
def test_bundle_manifest_with_one_field_broken(data: st.DataObject, delete: bool) -> None:
    path = data.draw(st.sampled_from(_paths(_GOOD_BUNDLE)))
    doc = _mutate(_GOOD_BUNDLE, path, data.draw(json_values), delete)
    try:
        parsed = BundleManifest.from_dict(doc, Path("/tmp/b"))
    except ModelportError:
        return
    # whatever parses keeps every artifact file inside the bundle and hashed
    listed = {f.path for f in parsed.files}
    for art in parsed.artifacts:
        assert art.path.relative_to("/tmp/b").as_posix() in listed


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), delete=st.booleans(), which=st.sampled_from(["convert", "bundle"]))
def test_manifest_files_with_one_field_broken(tmp_path: Path, data: st.DataObject, delete: bool, which: str) -> None:
    """Through the file readers too (path resolution, containment checks), and verify's report for bundles."""
    good = _GOOD_CONVERT if which == "convert" else _GOOD_BUNDLE
    doc = _mutate(good, data.draw(st.sampled_from(_paths(good))), data.draw(json_values), delete)
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    if which == "convert":
        _only_modelport_errors(Manifest.read, tmp_path)
    else:
        _only_modelport_errors(BundleManifest.read, tmp_path)
        assert not verify(tmp_path).ok  # no files on disk: never verified, never an exception


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("preprocessing", "image_size", 0), float("inf")),  # int(inf): OverflowError, found by the tests above
        (("artifacts", 0, "preprocessing", "mean", 0), 10**400),
        (("model",), "abc"),  # dict("abc"): ValueError
        (("dataset",), [1, 2]),
        (("artifacts", 0, "path"), "a\x00b"),  # a NUL in a path: ValueError from the filesystem calls
        (("artifacts", 0, "path"), 5),
    ],
    ids=["inf-image-size", "huge-mean", "model-str", "dataset-list", "nul-path", "int-path"],
)
def test_found_by_hypothesis_stay_fixed(tmp_path: Path, path: tuple, value: object) -> None:
    doc = _mutate(_GOOD_CONVERT, path, value, delete=False)
    with pytest.raises(ModelportError):
        Manifest.from_dict(doc, tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ModelportError):
        Manifest.read(tmp_path)


def test_the_good_documents_parse() -> None:
    """The property tests above start from documents that are valid, so their mutations probe real paths."""
    assert BundleManifest.from_dict(_GOOD_BUNDLE, Path("/tmp/b")).artifacts[0].path == Path(
        "/tmp/b/legacy-cpu/fp32/model.onnx")
    assert Manifest.from_dict(_GOOD_CONVERT, Path("/tmp/x")).artifacts[0].inputs[0].shape == ("batch", 4)


# ------------------------------------------------------------------------------------------------ bundle reading


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=600))
def test_random_bytes_as_a_bundle_archive(tmp_path: Path, blob: bytes) -> None:
    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(blob)
    _only_modelport_errors(safe_extract, archive, tmp_path / "out")
    report = verify(archive)
    assert not report.ok


member_names = st.one_of(
    st.text(alphabet="ab./\\:", min_size=0, max_size=10),
    st.sampled_from(["/abs", "..", "a/../..", "./x", "a//b", "manifest.json", "x/./y", ""]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(st.tuples(member_names, st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                                                                  tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])),
                        max_size=5))
@example(members=[("../evil", tarfile.REGTYPE)])
@example(members=[("a", tarfile.SYMTYPE), ("a/evil", tarfile.REGTYPE)])
@example(members=[("a", tarfile.REGTYPE), ("a/evil", tarfile.REGTYPE)])
def test_random_tar_structure_never_writes_outside(tmp_path_factory: pytest.TempPathFactory, members: list) -> None:
    root = tmp_path_factory.mktemp("tar")
    archive = root / "b.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "target" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            info.size = 3 if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(b"abc") if kind == tarfile.REGTYPE else None)
    dest = root / "inside" / "dest"
    try:
        written = safe_extract(archive, dest)
    except ModelportError:
        written = []
    outside = [p for p in root.rglob("*") if p not in (archive, root / "inside") and not p.is_relative_to(dest)]
    assert outside == []
    for p in (root / "inside").rglob("*"):
        assert not p.is_symlink() and (p.is_file() or p.is_dir())
    for p in written:
        assert p.resolve().is_relative_to(dest.resolve())


@SETTINGS
@given(name=st.text(max_size=20))
def test_clean_member_name_never_escapes(name: str) -> None:
    clean = clean_member_name(name)
    if clean is not None:
        assert not clean.is_absolute() and ".." not in clean.parts and str(clean) not in ("", ".")


# ------------------------------------------------------------------------------------------------ recipes


@SETTINGS
@given(text=st.text(max_size=200))
def test_recipe_from_random_text(text: str) -> None:
    recipe = pytest.importorskip("modelport.compression.recipe")
    _only_modelport_errors(recipe.Recipe.from_text, text)


@SETTINGS
@given(doc=json_values)
def test_recipe_from_random_tables(doc: object) -> None:
    recipe = pytest.importorskip("modelport.compression.recipe")
    _only_modelport_errors(recipe.Recipe.from_dict, doc)
    _only_modelport_errors(recipe.Recipe.from_dict, {"name": "r", "step": doc})
    _only_modelport_errors(recipe.Recipe.from_dict, {"name": "r", "step": [doc]})


@SETTINGS
@given(method=st.sampled_from(["cluster", "distill", "prune", "qat", "low-rank"]),
       key=st.sampled_from(["lr", "epochs", "finetune_epochs", "sparsity", "rank", "batch_size"]), value=json_scalars)
def test_recipe_step_values_at_the_edges(method: str, key: str, value: object) -> None:
    """1e308, inf, nan, 2**70 in any step parameter: a modelport error at parse time (issue 15: lr=1e308)."""
    recipe = pytest.importorskip("modelport.compression.recipe")
    _only_modelport_errors(recipe.Recipe.from_dict, {"name": "r", "step": [{"method": method, key: value}]})


# ------------------------------------------------------------------------------------------------ samples.npz


npy_shapes = st.lists(st.integers(min_value=0, max_value=2**40), max_size=4).map(tuple)


def _npz(members: list[tuple[str, bytes]]) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _npy_header(shape: tuple, descr: str) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@SETTINGS
@given(shape=npy_shapes, descr=st.sampled_from(["<f4", "<f8", "|u1", "<i8", "|O", "<c16"]),
       payload=st.binary(max_size=64), name=st.sampled_from(["input:input.npy", "reference.npy", "x", "../a.npy"]),
       raw=st.binary(max_size=200), mode=st.sampled_from(["header", "raw-member", "raw-file"]))
def test_samples_npz_of_any_shape_or_bytes(tmp_path: Path, shape: tuple, descr: str, payload: bytes, name: str,
                                           raw: bytes, mode: str) -> None:
    """Any declared shape or dtype, any bytes: ``load_samples`` refuses with a modelport error or loads a file whose
    arrays fit the cap; it never inflates past it (issue 15: a 4 MB npz reached 19.6 GB)."""
    from modelport.core.npz import declared_arrays
    from modelport.data.samples import load_samples

    path = tmp_path / "samples.npz"
    data = {"header": lambda: _npz([(name, _npy_header(shape, descr) + payload)]),
            "raw-member": lambda: _npz([(name, raw)]), "raw-file": lambda: raw}[mode]()
    path.write_bytes(data)
    try:
        load_samples(path, batch_size=4, max_bytes=1 << 20)
    except ModelportError:
        return
    assert sum(a.nbytes for a in declared_arrays(path)) <= 1 << 20


@SETTINGS
@given(value=st.text(max_size=12))
def test_limit_overrides_of_any_text(value: str) -> None:
    from modelport.core.limits import limit

    with pytest.MonkeyPatch.context() as m:
        m.setenv("MODELPORT_MAX_NODES", value) if "\x00" not in value else None
        try:
            got = limit("max_nodes")
        except ModelportError:
            return
    assert got is None or (isinstance(got, int) and got >= 1)
