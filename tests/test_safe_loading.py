"""Safe loading everywhere: no torch.load without weights_only=True, pickles that run code are refused, and
released weights load from safetensors when present."""

from __future__ import annotations

import ast
import pathlib
from pathlib import Path

import pytest
import torch

from mri_ssl.engines import (AtomicCheckpointer, export_encoder, load_checkpoint, load_encoder, load_network_weights,
                             load_safetensors)
from mri_ssl.errors import InputError
from mri_ssl.networks import CNNEncoder3D

REPO = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("mri_ssl", "tests", "benchmarks", "bundles")


def unsafe_torch_loads(source: str, filename: str = "<string>") -> list[str]:
    """Calls of torch.load (however imported) without a literal weights_only=True, as 'file:line'."""
    tree = ast.parse(source, filename)
    load_names = {"torch.load"}
    for node in ast.walk(tree):  # `from torch import load [as x]`, `import torch as t`
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            load_names.update(a.asname or a.name for a in node.names if a.name == "load")
        elif isinstance(node, ast.Import):
            load_names.update(f"{a.asname}.load" for a in node.names if a.name == "torch" and a.asname)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name in load_names:
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                found.append(f"{filename}:{node.lineno}")
    return found


@pytest.mark.parametrize("snippet, unsafe", [
    ("import torch\ntorch.load('x')", True),
    ("import torch\ntorch.load('x', weights_only=False)", True),
    ("import torch as t\nt.load('x', map_location='cpu')", True),
    ("from torch import load\nload('x')", True),
    ("import torch\nflag = True\ntorch.load('x', weights_only=flag)", True),  # only a literal True is evidence
    ("import torch\ntorch.load('x', weights_only=True)", False),
    ("import numpy\nnumpy.load('x')", False),
])
def test_the_checker_finds_unsafe_loads(snippet, unsafe):
    assert bool(unsafe_torch_loads(snippet)) == unsafe


def test_no_torch_load_without_weights_only_in_the_source_tree():
    files = [p for folder in SOURCE_FOLDERS for p in (REPO / folder).rglob("*.py") if ".venv" not in p.parts]
    assert len(files) > 30
    found = [hit for path in files for hit in unsafe_torch_loads(path.read_text(), str(path.relative_to(REPO)))]
    assert found == []


class MarkerPickle:
    """Unpickling this calls Path.touch on the marker: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.fixture
def malicious_checkpoint(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "encoder_final.pt"
    torch.save({"config": {"features": [2, 4]}, "state_dict": {}, "payload": MarkerPickle(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_malicious_pickle_is_refused_and_runs_nothing(malicious_checkpoint):
    path, marker = malicious_checkpoint
    with pytest.raises(InputError, match="cannot load checkpoint safely"):
        load_checkpoint(path)
    with pytest.raises(InputError, match="encoder_final.pt"):
        load_encoder(path)
    assert not marker.exists()
    # The fixture is really malicious: plain unpickling of its data.pkl does create the marker.
    import pickle
    import zipfile
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    pickle.loads(data)
    assert marker.exists()


def test_released_weights_load_from_safetensors_when_present(tmp_path):
    torch.manual_seed(0)
    encoder = CNNEncoder3D(features=[2, 4, 4])
    export_encoder(encoder, tmp_path / "encoder_final.pt")
    twin = tmp_path / "encoder_final.safetensors"
    tensors, metadata = load_safetensors(twin)
    assert set(tensors) == set(encoder.state_dict()) and '"features": [2, 4, 4]' in metadata["config"]
    # Break the pickle: the loader must not need it when the safetensors twin is there.
    (tmp_path / "encoder_final.pt").write_bytes(b"corrupt")
    loaded = load_encoder(tmp_path / "encoder_final.pt")
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    twin.unlink()
    with pytest.raises(InputError, match="cannot load checkpoint safely"):
        load_encoder(tmp_path / "encoder_final.pt")


def test_checkpointer_writes_safetensors_of_the_network(tmp_path):
    from ignite.engine import Engine

    network = torch.nn.Conv3d(1, 2, 3)
    checkpointer = AtomicCheckpointer(tmp_path, network, metric_name=None, export_encoder=False)
    engine = Engine(lambda e, b: None)
    checkpointer.attach(engine)
    engine.run([0], max_epochs=1)
    assert (tmp_path / "final.safetensors").is_file()
    with torch.no_grad():
        network.weight.zero_()  # the .pt keeps its copy; the loader must take the safetensors one
    weights = load_network_weights(tmp_path / "final.pt")
    assert torch.equal(weights["weight"], load_safetensors(tmp_path / "final.safetensors")[0]["weight"])
    assert not torch.equal(weights["weight"], network.weight)
    (tmp_path / "final.safetensors").unlink()
    assert torch.equal(load_network_weights(tmp_path / "final.pt")["bias"], load_checkpoint(
        tmp_path / "final.pt")["network"]["bias"])
