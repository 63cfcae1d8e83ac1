"""verify-bundle, one check at a time: each passes on the tiny bundle and fails on a copy broken in that one way."""

from __future__ import annotations

import copy
import json

import pytest

from mri_ssl.cli import main
from mri_ssl.trust.scan import expression_problems, scan_bundle
from mri_ssl.trust.verify import verify_bundle
from mri_ssl.trust.zoo import ZOO_CHECKS
from trust_fixtures import INFERENCE, METADATA, TRAIN, make_tiny_bundle

FILE_CHECKS = ("layout", "metadata", "static-scan", "large-files")


def statuses(report):
    return {c.name: c.status for c in report.checks}


def detail(report, name):
    return next(c.detail for c in report.checks if c.name == name)


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_bundle(tmp_path / "tiny_bundle")


def test_tiny_bundle_passes_every_check(tiny, tmp_path):
    report = verify_bundle(tiny, workdir=tmp_path / "work")
    assert statuses(report) == {
        "layout": "PASS", "metadata": "PASS", "static-scan": "PASS", "large-files": "PASS", "net-in-out": "PASS",
        "torchscript": "PASS", "workflow-train": "PASS", "workflow-evaluate": "SKIP", "workflow-inference": "PASS",
        **{f"zoo-{name}": "PASS" for name in ZOO_CHECKS},
    }, [str(c) for c in report.checks]
    assert report.ok
    assert "max |eager - TorchScript| = 0" in detail(report, "torchscript")


# ---------------------------------------------------------------------------------------------------------------
# layout and metadata


@pytest.mark.parametrize("missing", ["LICENSE", "docs/README.md", "configs/inference.json", "large_files.yml",
                                     "configs/cpu_demo.json"])
def test_layout_names_the_missing_file(tmp_path, missing):
    bundle = make_tiny_bundle(tmp_path / "b", **{missing: None})
    report = verify_bundle(bundle, checks=["layout"])
    assert statuses(report) == {"layout": "FAIL"} and f"missing {missing}" in detail(report, "layout")


def broken_metadata(edit):
    metadata = copy.deepcopy(METADATA)
    edit(metadata)
    return metadata


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("copyright"), "'copyright' is a required property"),
    (lambda m: m.pop("required_packages_version"), "'required_packages_version' is a required property"),
    (lambda m: m["network_data_format"]["inputs"]["image"].pop("dtype"), "'dtype' is a required property"),
    (lambda m: m["network_data_format"]["outputs"]["pred"].update(value_range="0-1"), "is not of type 'array'"),
    (lambda m: m.update(version="0.2.0"), "version '0.2.0' is not a key of changelog"),
    (lambda m: m.update(version="two"), "does not match"),
])
def test_metadata_is_checked_against_the_specification_schema(tmp_path, edit, message):
    bundle = make_tiny_bundle(tmp_path / "b", **{"configs/metadata.json": broken_metadata(edit)})
    report = verify_bundle(bundle, checks=["metadata"])
    assert statuses(report) == {"metadata": "FAIL"}
    assert message in detail(report, "metadata"), detail(report, "metadata")


# ---------------------------------------------------------------------------------------------------------------
# static scan


@pytest.mark.parametrize("text", [
    "import os; os.system('id')", "__import__('os')", "().__class__.__bases__[0].__subclasses__()",
    "open('/etc/passwd').read()", "getattr(torch, 'load')('x.pt')", "torch.load('x.pt')", "import subprocess",
    "from os import system", "eval('1')", "(lambda f: f.f_globals)(None)", "torch.hub.load('a', 'b')",
    "numpy.load('x.npy', allow_pickle=True)", "exec('x = 1')", "@network.__class__", "os.environ.update(A='1')",
    "'{0.__init__.__globals__}'.format(torch)", "f'{torch.__spec__}'",
])
def test_expressions_outside_the_allow_list_are_refused(text):
    problems, _ = expression_problems(text, {"torch": "torch", "numpy": "numpy"})
    assert problems, text


@pytest.mark.parametrize("text", [
    "os.path.join(@bundle_root, 'models')", "torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
    "[int(round(s * 1.25)) for s in @crop_size]", "lambda epoch: max(0.0, 1.0 - epoch / @num_epochs) ** 0.9",
    "@network.load_state_dict(load_checkpoint(@checkpoint)['network'])", "import torch.distributed as dist",
    "lambda d: {**d, 'pred': d['pred'] * 2}", "'cuda:' + os.environ['LOCAL_RANK']", "'{}_{:03d}'.format('a', 3)",
])
def test_the_expressions_bundles_use_are_allowed(text):
    problems, _ = expression_problems(text, {"os": "os", "torch": "torch",
                                             "load_checkpoint": "mri_ssl.engines.load_checkpoint"})
    assert problems == [], problems


@pytest.mark.parametrize("key, value, reason", [
    ("_target_", "subprocess.run", "module 'subprocess' is not on the allow-list"),
    ("_target_", "run", "monai.bundle.scripts.run"),            # MONAI's bare name for running another bundle
    ("_target_", "torch.hub.load", "torch.hub is denied"),
    ("_target_", "monai.utils.module.locate", "monai.utils.module is denied"),
    ("_target_", "os.system", "only os.path"),
    ("_mode_", "debug", "interactive debugger"),
    ("evil", "$__import__('os').system('id')", "'__import__' is not a safe builtin"),
    ("evil", "%/etc/secrets.json#key", "outside the bundle"),
])
def test_scan_reports_file_key_and_text(tmp_path, key, value, reason):
    train = copy.deepcopy(TRAIN)
    train["train"]["handlers"] = [{key: value}] if key.startswith("_") else []
    if not key.startswith("_"):
        train[key] = value
    bundle = make_tiny_bundle(tmp_path / "b", **{"configs/train.json": train})
    findings = scan_bundle(bundle)
    assert len(findings) == 1, findings
    finding = findings[0]
    assert finding.file == "configs/train.json" and finding.text == value and reason in finding.reason
    assert finding.key == ("train#handlers#0#" + key if key.startswith("_") else key)


def test_logging_conf_handlers_and_args_are_scanned(tmp_path):
    conf = ("[loggers]\nkeys=root\n[handlers]\nkeys=h\n[formatters]\nkeys=\n[logger_root]\nhandlers=h\n"
            "[handler_h]\nclass=StreamHandler\nargs=(__import__('os').system('id'),)\n")
    bundle = make_tiny_bundle(tmp_path / "b", **{"configs/logging.conf": conf})
    findings = scan_bundle(bundle)
    assert [(f.file, f.key) for f in findings] == [("configs/logging.conf", "handler_h#args")] * len(findings)
    assert findings


def marker_bundle(tmp_path):
    """A bundle whose network_def would create a marker file when parsed; the scan refuses it."""
    marker = tmp_path / "MARKER"
    inference = copy.deepcopy(INFERENCE)
    inference["network_def"] = f"$__import__('pathlib').Path({str(marker)!r}).touch() or torch.nn.Identity()"
    return make_tiny_bundle(tmp_path / "b", **{"configs/inference.json": inference}), marker


def test_a_bundle_that_fails_the_scan_is_never_parsed_or_run(tmp_path):
    bundle, marker = marker_bundle(tmp_path)
    report = verify_bundle(bundle, workdir=tmp_path / "work")
    assert statuses(report)["static-scan"] == "FAIL" and not report.ok
    for name in ("net-in-out", "torchscript", "workflow-train", "workflow-inference"):
        assert statuses(report)[name] == "SKIP" and "--trust-bundle" in detail(report, name)
    assert not marker.exists()
    assert main(["run-bundle", str(bundle), "--config", "inference.json"]) == 1
    assert not marker.exists()
    good = make_tiny_bundle(tmp_path / "good")
    evil = f"$__import__('pathlib').Path({str(marker)!r}).touch()"
    assert main(["run-bundle", str(good), "--config", "inference.json", "--set", f"network_def={evil}"]) == 1
    assert not marker.exists()
    assert main(["run-bundle", str(good), "--config", "train.json", "--set", "num_epochs=1"]) == 0  # a clean run
    # The gate is what stopped it: trusting the bundle does run its code.
    verify_bundle(bundle, trust_bundle=True, checks=["net-in-out"])
    assert marker.exists()


def test_cli_verify_bundle_prints_a_line_per_check_and_fails_with_status_1(tmp_path, capsys):
    bundle, _ = marker_bundle(tmp_path)
    assert main(["verify-bundle", "--static-only", str(bundle)]) == 1
    out = capsys.readouterr().out
    assert "PASS layout" in out and "FAIL static-scan: 1 refused" in out
    assert "configs/inference.json: network_def" in out
    assert main(["verify-bundle", "--static-only", str(make_tiny_bundle(tmp_path / "good"))]) == 0


# ---------------------------------------------------------------------------------------------------------------
# network checks and workflows


def test_net_in_out_fails_when_the_metadata_disagrees_with_the_network(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "b", **{"configs/metadata.json": broken_metadata(
        lambda m: m["network_data_format"]["outputs"]["pred"].update(num_channels=3))})
    report = verify_bundle(bundle, checks=["net-in-out"])
    assert statuses(report) == {"net-in-out": "FAIL"}
    assert "output channel number `2` doesn't match: `3`" in detail(report, "net-in-out")


def encoder_bundle(tmp_path, torchscript):
    """A bundle whose network is CNNEncoder3D (it scripts and traces)."""
    inference = copy.deepcopy(INFERENCE)
    inference["network_def"] = {"_target_": "mri_ssl.networks.CNNEncoder3D", "features": [2, 4], "dropout": 0.0}
    metadata = broken_metadata(lambda m: m["network_data_format"]["outputs"]["pred"].update(num_channels=4))
    return make_tiny_bundle(tmp_path / "b", **{"configs/inference.json": inference, "configs/metadata.json": metadata,
                                               "configs/verify_bundle.json": {"torchscript": torchscript}})


@pytest.mark.parametrize("torchscript, status, text", [
    ({}, "PASS", "scripted, reloaded"),  # the encoder scripts, as MONAI's ckpt_export (the zoo's check) needs
    ({"use_trace": True}, "PASS", "traced, reloaded"),
    ({"skip": "returns stage maps for the decoder"}, "SKIP", "opted out in configs/verify_bundle.json: returns"),
])
def test_torchscript_export_compare_or_documented_opt_out(tmp_path, torchscript, status, text):
    report = verify_bundle(encoder_bundle(tmp_path, torchscript), checks=["torchscript"])
    assert statuses(report) == {"torchscript": status} and text in detail(report, "torchscript")


def test_workflow_check_properties_names_what_is_missing(tmp_path):
    inference = copy.deepcopy(INFERENCE)
    inference.pop("inferer")
    inference["evaluator"]["inferer"] = {"_target_": "SimpleInferer"}
    bundle = make_tiny_bundle(tmp_path / "b", **{"configs/inference.json": inference})
    report = verify_bundle(bundle, checks=["workflows"], workdir=tmp_path / "work")
    assert statuses(report)["workflow-train"] == "PASS"
    assert statuses(report)["workflow-inference"] == "FAIL"
    assert "check_properties: missing or wrongly referenced" in detail(report, "workflow-inference")
    assert "'inferer'" in detail(report, "workflow-inference")


def test_workflows_use_cpu_demo_and_the_overrides(tmp_path):
    train = copy.deepcopy(TRAIN)
    train["run"].append("$print('EPOCHS', @train#trainer.state.epoch)")
    bundle = make_tiny_bundle(tmp_path / "b", **{"configs/train.json": train,
                                                 "configs/verify_bundle.json": {"overrides": {"num_epochs": 3}}})
    report = verify_bundle(bundle, checks=["workflows"], workdir=tmp_path / "work")
    assert report.ok, [str(c) for c in report.checks]
    bundle = make_tiny_bundle(tmp_path / "c", **{"configs/verify_bundle.json": {"unknown": 1}})
    assert statuses(verify_bundle(bundle, checks=["workflows"])) == {"verify-settings": "FAIL"}


# ---------------------------------------------------------------------------------------------------------------
# large_files.yml


def test_large_files_need_sha256_and_matching_local_copies(tmp_path):
    good = "a" * 64
    cases = {
        "large_files:\n  - {path: models/model.pt, url: 'https://x/m.pt', hash_val: '%s', hash_type: sha256}\n"
        % good: "PASS",
        "large_files:\n  - {path: models/model.pt, url: 'https://x/m.pt', hash_val: abc, hash_type: md5}\n": "FAIL",
        "large_files:\n  - {path: ../outside.pt, url: 'https://x/m.pt', hash_val: '%s', hash_type: sha256}\n"
        % good: "FAIL",
        "large_files:\n  - {path: models/model.pt, hash_val: '%s', hash_type: sha256}\n" % good: "FAIL",
    }
    for i, (text, status) in enumerate(cases.items()):
        bundle = make_tiny_bundle(tmp_path / f"b{i}", **{"large_files.yml": text, "models/model.pt": None})
        assert statuses(verify_bundle(bundle, checks=["large-files"])) == {"large-files": status}, text
    # a local copy that does not match its entry
    (tmp_path / "b0" / "models").mkdir(exist_ok=True)
    (tmp_path / "b0" / "models" / "model.pt").write_bytes(b"not the released weights")
    report = verify_bundle(tmp_path / "b0", checks=["large-files"])
    assert "models/model.pt: sha256 does not match" in detail(report, "large-files")


def test_verify_report_json(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "b")
    assert main(["verify-bundle", "--static-only", str(bundle), "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert [c["status"] for c in report["b"]] == ["PASS"] * 4


# ---------------------------------------------------------------------------------------------------------------
# the model zoo's checks, the zoo's way


def test_zoo_checks_fail_what_the_zoo_fails(tmp_path):
    """No weights, both package fields, a network_def only in train.json, a 1-voxel shape: each fails its zoo check
    while our own checks (which stack configs and choose n) still pass."""
    metadata = {**METADATA, "optional_packages_version": {"transformers": "5.20.2"},
                "network_data_format": {**METADATA["network_data_format"], "outputs": {
                    "pred": {**METADATA["network_data_format"]["outputs"]["pred"], "num_channels": 3}}}}
    inference = {k: v for k, v in INFERENCE.items() if k != "network_def"}
    settings = {"stages": {"inference": ["configs/train.json", "configs/inference.json"]},
                "net_in_out": {"skip": "checked by hand"}}
    files = {"models/model.pt": None, "configs/metadata.json": metadata, "configs/inference.json": inference,
             "configs/verify_bundle.json": settings}
    bundle = make_tiny_bundle(tmp_path / "b", **files)
    report = verify_bundle(bundle, workdir=tmp_path / "work", checks=("zoo",))
    zoo = statuses(report)
    assert zoo["zoo-files"] == "FAIL" and "models/model.pt" in detail(report, "zoo-files")
    assert zoo["zoo-metadata"] == "FAIL" and "optional_packages_version" in detail(report, "zoo-metadata")
    assert zoo["zoo-properties"] == "FAIL" and "network_def" in detail(report, "zoo-properties")
    assert zoo["zoo-net-in-out"] == "SKIP" and zoo["zoo-torchscript"] == "FAIL"
    assert not report.ok
