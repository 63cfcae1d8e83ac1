"""simulate(): map validation, R2*/R2 and MT handling, magnitude output, batching, and the fused (compiled) path."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from mri_ssl.errors import InputError, ProtocolError
from mri_ssl.physics import fused, sequences
from mri_ssl.physics.protocols import SEQUENCES, TYPICAL_PROTOCOLS, protocol_item, sample_protocol
from mri_ssl.physics.simulate import check_maps, simulate

F64 = torch.float64


def _source(error_type, fn, *args, **kwargs):
    with pytest.raises(error_type) as info:
        fn(*args, **kwargs)
    assert str(info.value).startswith(f"{info.value.source}:")
    return info.value.source, str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Map validation


def test_valid_maps_pass(make_maps):
    maps = make_maps((2, 3, 4), with_r2=True, with_mt=True)
    maps["b1"] = torch.ones(2, 3, 4, dtype=F64)
    check_maps(maps)
    check_maps(maps, spatial_dims=3)
    check_maps({k: v[0] for k, v in maps.items()}, spatial_dims=2)
    check_maps({k: v.float() for k, v in maps.items()})


@pytest.mark.parametrize("name", ["pd", "r1", "r2s", "r2", "mt", "b1"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_map_is_named(name, bad, make_maps):
    maps = make_maps((2, 3, 4), with_r2=True, with_mt=True)
    maps["b1"] = torch.ones(2, 3, 4, dtype=F64)
    maps[name] = maps[name].clone()
    maps[name][1, 2, 3] = bad
    source, message = _source(InputError, check_maps, maps)
    assert source == name and "non-finite" in message
    source, _ = _source(InputError, simulate, maps, "gre", TYPICAL_PROTOCOLS["gre"])
    assert source == name


def test_bad_voxels_are_counted_wherever_they_are_in_a_large_float32_map():
    """The one-pass check (aminmax) must see a bad voxel at the end of a vectorised map, and the message counts all."""
    shape = (16, 16, 17)
    maps = {"pd": torch.rand(shape), "r1": torch.rand(shape) + 0.2, "r2s": torch.rand(shape) + 1.0}
    check_maps(maps)
    check_maps({**maps, "pd": torch.ones(shape, dtype=torch.int32)})  # an integer map in range passes
    flat = maps["r1"].clone().flatten()
    flat[[-1, 7, 100]] = torch.tensor([float("nan"), float("inf"), float("nan")])
    source, message = _source(InputError, check_maps, {**maps, "r1": flat.reshape(shape)})
    assert source == "r1" and "3 non-finite voxel(s)" in message
    flat = maps["r2s"].clone().flatten()
    flat[[-1, 5]] = -2.0
    source, message = _source(InputError, check_maps, {**maps, "r2s": flat.reshape(shape)})
    assert source == "r2s" and "found 2 voxel(s) outside, e.g. -2" in message


@pytest.mark.parametrize("name", ["pd", "r1", "r2s", "r2"])
def test_negative_map_is_named(name, make_maps):
    maps = make_maps((2, 3, 4), with_r2=True)
    maps[name] = maps[name].clone()
    maps[name][0, 0, 0] = -0.5
    source, message = _source(InputError, simulate, maps, "fse", TYPICAL_PROTOCOLS["fse"])
    assert source == name and "-0.5" in message


@pytest.mark.parametrize("value", [1.0, 5.0])
def test_mt_of_one_or_more_is_rejected(value, make_maps):
    maps = make_maps((2, 3, 4), with_mt=True)
    maps["mt"][0, 1, 1] = value  # e.g. a map in percent units
    source, message = _source(InputError, simulate, maps, "gre", TYPICAL_PROTOCOLS["gre"])
    assert source == "mt" and "[0, 1)" in message


def test_mismatched_shapes_name_the_map(make_maps):
    maps = make_maps((2, 3, 4))
    maps["r2s"] = torch.ones(2, 3, 5, dtype=F64)
    source, message = _source(InputError, simulate, maps, "gre", TYPICAL_PROTOCOLS["gre"])
    assert source == "r2s" and "(2, 3, 5)" in message and "(2, 3, 4)" in message


def test_missing_map_is_named(make_maps):
    maps = make_maps((2, 3, 4))
    del maps["r1"]
    source, message = _source(InputError, simulate, maps, "fse", TYPICAL_PROTOCOLS["fse"])
    assert source == "r1" and "missing" in message


def test_unknown_map_is_named(make_maps):
    maps = make_maps((2, 3, 4))
    maps["t1"] = torch.ones(2, 3, 4, dtype=F64)
    source, _ = _source(InputError, simulate, maps, "fse", TYPICAL_PROTOCOLS["fse"])
    assert source == "t1"


def test_2d_maps_when_3d_expected(make_maps):
    maps = make_maps((3, 4))
    source, message = _source(InputError, simulate, maps, "fse", TYPICAL_PROTOCOLS["fse"], spatial_dims=3)
    assert source in maps and "expected 3" in message
    simulate(maps, "fse", TYPICAL_PROTOCOLS["fse"], spatial_dims=2)  # fine when 2-D is what is asked for


def test_unknown_sequence_and_bad_protocol(make_maps):
    maps = make_maps((2, 2, 2))
    source, message = _source(ProtocolError, simulate, maps, "dwi", {"tr": 1.0, "te": 0.1})
    assert source == "sequence" and "dwi" in message
    source, message = _source(ProtocolError, simulate, maps, "fse", {"tr": 0.05, "te": 0.1})
    assert source == "te" and "0.1" in message
    # validate=False skips the range checks but never runs without a needed parameter.
    source, _ = _source(ProtocolError, simulate, maps, "gre", {"tr": 0.05, "te": 0.01}, validate=False)
    assert source == "flip_angle"


# ---------------------------------------------------------------------------------------------------------------
# What simulate computes


@pytest.mark.parametrize("sequence", ["fse", "flair"])
def test_r2star_stands_in_for_missing_r2(sequence, make_maps):
    maps = make_maps((2, 3, 4), with_r2=True)
    protocol = TYPICAL_PROTOCOLS[sequence]
    without_r2 = simulate({k: v for k, v in maps.items() if k != "r2"}, sequence, protocol)
    r2_equal_r2s = simulate(dict(maps, r2=maps["r2s"]), sequence, protocol)
    assert torch.equal(without_r2, r2_equal_r2s)
    with_r2 = simulate(maps, sequence, protocol)
    assert not torch.allclose(with_r2, without_r2)
    expected = getattr(sequences, sequence)(maps["pd"], maps["r1"], maps["r2"], **protocol).abs()
    torch.testing.assert_close(with_r2, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("sequence", ["gre", "mprage"])
def test_gradient_echo_sequences_ignore_r2(sequence, make_maps):
    maps = make_maps((2, 3, 4), with_r2=True)
    protocol = TYPICAL_PROTOCOLS[sequence]
    assert torch.equal(simulate(maps, sequence, protocol),
                       simulate({k: v for k, v in maps.items() if k != "r2"}, sequence, protocol))


def test_gre_uses_mt_when_given(make_maps):
    maps = make_maps((2, 3, 4), with_mt=True)
    protocol = TYPICAL_PROTOCOLS["gre"]
    with_mt = simulate(maps, "gre", protocol)
    without_mt = simulate({k: v for k, v in maps.items() if k != "mt"}, "gre", protocol)
    assert torch.all(with_mt < without_mt)
    expected = sequences.gre(maps["pd"], maps["r1"], maps["r2s"], mt=maps["mt"], **protocol).abs()
    torch.testing.assert_close(with_mt, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(without_mt, sequences.gre(maps["pd"], maps["r1"], maps["r2s"], **protocol).abs(),
                               rtol=1e-12, atol=0)


def test_output_is_the_non_negative_magnitude(make_maps):
    maps = make_maps((2, 3, 4))
    # A short TI leaves every tissue inverted: the signed FLAIR signal is negative, the image is its magnitude.
    protocol = {"tr": 6.0, "te": 0.02, "ti": 0.1}
    signed = sequences.flair(maps["pd"], maps["r1"], maps["r2s"], **protocol)
    assert torch.all(signed < 0)
    image = simulate(maps, "flair", protocol)
    assert torch.all(image >= 0)
    torch.testing.assert_close(image, signed.abs(), rtol=1e-12, atol=0)
    for sequence in SEQUENCES:
        batch = sample_protocol(sequence, 8, generator=torch.Generator().manual_seed(0))
        assert torch.all(simulate(maps, sequence, batch) >= 0)


def test_b1_map_scales_the_image_voxelwise(make_maps):
    maps = make_maps((2, 3, 4))
    b1 = torch.linspace(0.5, 1.5, 24, dtype=F64).reshape(2, 3, 4)
    for sequence in SEQUENCES:
        protocol = sample_protocol(sequence, 2, generator=torch.Generator().manual_seed(4))
        plain = simulate(maps, sequence, protocol)
        torch.testing.assert_close(simulate(dict(maps, b1=b1), sequence, protocol), plain * b1, rtol=1e-12, atol=0)


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batch"])
def test_b1_map_with_one_dimensional_maps(batched, make_maps):
    """Maps may have any number of dimensions (spatial_dims=None); a 1-D b1 *map* must not become a protocol batch."""
    maps = make_maps((5,))
    b1 = torch.linspace(0.5, 1.5, 5, dtype=F64)
    protocol = sample_protocol("fse", 3, generator=torch.Generator().manual_seed(4)) if batched \
        else TYPICAL_PROTOCOLS["fse"]
    plain = simulate(maps, "fse", protocol)
    assert plain.shape == ((3, 5) if batched else (5,))
    scaled = simulate(dict(maps, b1=b1), "fse", protocol)
    assert scaled.shape == plain.shape
    torch.testing.assert_close(scaled, plain * b1, rtol=1e-12, atol=0)


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_simulate_batch_equals_a_loop(sequence, make_maps):
    maps = make_maps((3, 4, 5), with_mt=True)
    protocol = sample_protocol(sequence, 6, generator=torch.Generator().manual_seed(12))
    batched = simulate(maps, sequence, protocol)
    assert batched.shape == (6, 3, 4, 5)
    for b in range(6):
        single = simulate(maps, sequence, protocol_item(protocol, b))
        assert single.shape == (3, 4, 5)
        torch.testing.assert_close(batched[b], single, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_simulate_dtype_follows_the_maps(sequence, make_maps):
    protocol = sample_protocol(sequence, 2, generator=torch.Generator().manual_seed(1))  # float64
    maps32 = make_maps((2, 3, 4), dtype=torch.float32, with_mt=True)
    out = simulate(maps32, sequence, protocol)
    assert out.dtype == torch.float32 and out.shape == (2, 2, 3, 4)
    assert simulate(make_maps((2, 3, 4), with_mt=True), sequence, protocol).dtype == F64


# ---------------------------------------------------------------------------------------------------------------
# Fused (compiled) path


def _relative_difference(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_fused_equals_eager_and_the_disable_switch(make_maps, monkeypatch):
    """One test compiles every kernel once (the slow part), on tiny volumes with a batch of 3 protocols."""
    monkeypatch.delenv(fused.DISABLE_ENV, raising=False)
    maps = make_maps((4, 4, 4), dtype=torch.float32, with_mt=True)
    compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    results = {}
    for sequence in SEQUENCES:
        protocol = sample_protocol(sequence, 3, generator=torch.Generator().manual_seed(21))
        eager = simulate(maps, sequence, protocol, fused=False)
        compiled = simulate(maps, sequence, protocol, fused=True)
        assert compiled.shape == eager.shape == (3, 4, 4, 4)
        assert compiled.dtype == torch.float32
        assert _relative_difference(compiled, eager) <= 1e-5, sequence
        if compiler:
            assert fused.fused_available(sequence), f"{sequence}: compiled kernel did not run"
        results[sequence] = (protocol, eager)

    # MRI_SSL_DISABLE_COMPILE=1 forces eager even with fused=True, and compiles nothing new.
    monkeypatch.setenv(fused.DISABLE_ENV, "1")
    assert fused.compile_disabled()
    monkeypatch.setattr(fused, "_compiled", {})
    for sequence, (protocol, eager) in results.items():
        assert torch.equal(simulate(maps, sequence, protocol, fused=True), eager)
    assert fused._compiled == {}
    for value in ("0", "", "false"):
        monkeypatch.setenv(fused.DISABLE_ENV, value)
        assert not fused.compile_disabled()


def test_compile_failure_falls_back_silently(make_maps, monkeypatch):
    monkeypatch.delenv(fused.DISABLE_ENV, raising=False)
    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "_failed", set())
    calls = []

    def broken_compile(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    maps = make_maps((3, 3, 3), dtype=torch.float32, with_mt=True)
    for sequence in SEQUENCES:
        protocol = sample_protocol(sequence, 2, generator=torch.Generator().manual_seed(2))
        eager = simulate(maps, sequence, protocol, fused=False)
        for _ in range(2):
            assert torch.equal(simulate(maps, sequence, protocol, fused=True), eager)
        assert not fused.fused_available(sequence)
        assert sequence in fused._failed
    assert len(calls) == len(SEQUENCES)  # a failed sequence is not compiled again


def test_failure_inside_the_compiled_call_falls_back(make_maps, monkeypatch):
    monkeypatch.delenv(fused.DISABLE_ENV, raising=False)
    monkeypatch.setattr(fused, "_failed", set())

    monkeypatch.setattr(fused, "_compiled", {})

    def raising_kernel(*args):
        raise RuntimeError("compiled kernel crashed")

    monkeypatch.setattr(torch, "compile", lambda function, **kwargs: raising_kernel)
    maps = make_maps((3, 3, 3), dtype=torch.float32)
    protocol = TYPICAL_PROTOCOLS["fse"]
    out = simulate(maps, "fse", protocol, fused=True)
    assert torch.equal(out, simulate(maps, "fse", protocol, fused=False))
    assert not fused.fused_available("fse") and fused._compiled == {}


# ---------------------------------------------------------------------------------------------------------------
# out=


@pytest.mark.parametrize("use_fused", [False, True], ids=["eager", "fused"])
def test_out_gives_the_same_image_in_the_given_buffer(use_fused, make_maps, monkeypatch):
    monkeypatch.delenv(fused.DISABLE_ENV, raising=False)
    maps = make_maps((4, 4, 4), dtype=torch.float32, with_mt=True)
    for sequence in SEQUENCES:
        batch = sample_protocol(sequence, 3, generator=torch.Generator().manual_seed(5))
        for protocol, shape in ((batch, (3, 4, 4, 4)), (protocol_item(batch, 1), (4, 4, 4))):
            fresh = simulate(maps, sequence, protocol, fused=use_fused)
            buffer = torch.full(shape, float("nan"))
            returned = simulate(maps, sequence, protocol, fused=use_fused, out=buffer)
            assert returned is buffer
            assert torch.equal(buffer, fresh), sequence
            # A second call refills the buffer completely (no stale values) and a fresh call is independent of it.
            other = protocol_item(sample_protocol(sequence, 1, generator=torch.Generator().manual_seed(9)), 0)
            if len(shape) == 3:
                simulate(maps, sequence, other, fused=use_fused, out=buffer)
                assert torch.equal(buffer, simulate(maps, sequence, other, fused=use_fused))
                assert not torch.equal(buffer, fresh)
            assert simulate(maps, sequence, protocol, fused=use_fused).data_ptr() != buffer.data_ptr()


def test_wrong_out_is_named_before_any_work(make_maps, monkeypatch):
    maps = make_maps((3, 4, 5), dtype=torch.float32)
    protocol = sample_protocol("fse", 2, generator=torch.Generator().manual_seed(3))
    calls = []
    monkeypatch.setitem(sequences.KERNELS, "fse", lambda *args: calls.append(args))
    cases = [
        (torch.empty(3, 4, 5), "has shape (3, 4, 5), expected (2, 3, 4, 5)"),
        (torch.empty(2, 3, 4, 5, dtype=F64), "has dtype torch.float64, expected torch.float32"),
        (torch.empty(2, 3, 5, 4).transpose(-1, -2), "must be contiguous"),
        (torch.empty(2, 3, 4, 5, requires_grad=True), "cannot be used with autograd"),
        ([[0.0]], "must be a torch.Tensor"),
    ]
    for use_fused in (False, True):
        for out, message in cases:
            source, text = _source(InputError, simulate, maps, "fse", protocol, fused=use_fused, out=out)
            assert source == "out" and message in text, text
    grad_maps = dict(maps, pd=maps["pd"].clone().requires_grad_(True))
    source, text = _source(InputError, simulate, grad_maps, "fse", protocol, out=torch.empty(2, 3, 4, 5))
    assert source == "out" and "autograd" in text
    assert calls == []


def test_fused_autograd_path_matches_eager_gradients(make_maps, monkeypatch):
    """With maps that require grad, the fused path returns a fresh differentiable image (no out buffer)."""
    monkeypatch.delenv(fused.DISABLE_ENV, raising=False)
    maps = make_maps((2, 3, 4))
    protocol = sample_protocol("fse", 2, generator=torch.Generator().manual_seed(6))
    grads = []
    for use_fused in (False, True):
        pd = maps["pd"].clone().requires_grad_(True)
        image = simulate(dict(maps, pd=pd), "fse", protocol, fused=use_fused)
        image.sum().backward()
        grads.append(pd.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# The in-place eager kernels and the rule for when the compiled kernel is used


def _reference_signal(sequence, maps, protocol, b1):
    """The signed signal written out with math, voxel by voxel (independent of both kernel families)."""
    p = {k: float(v) for k, v in protocol.items()}
    values = []
    for pd, r1, r2s, mt, gain in zip(*(maps[k].flatten().tolist() for k in ("pd", "r1", "r2s", "mt")),
                                     b1.flatten().tolist()):
        r2 = r2s  # simulate() lets R2* stand in for R2 when no r2 map is given
        if sequence == "fse":
            s = pd * (1 - math.exp(-r1 * p["tr"])) * math.exp(-r2 * p["te"])
        elif sequence == "flair":
            s = pd * math.exp(-r2 * p["te"]) * (1 - 2 * math.exp(-r1 * p["ti"]) + math.exp(-r1 * p["tr"]))
        elif sequence == "gre":
            e1, a = math.exp(-r1 * p["tr"]), p["flip_angle"]
            s = pd * math.sin(a) * (1 - mt) * (1 - e1) / (1 - math.cos(a) * (1 - mt) * e1) * math.exp(-r2s * p["te"])
        else:  # MPRAGE: iterate one inversion cycle pulse by pulse until Mz before the inversion stops changing
            n, a, eff = int(p["n"]), p["flip_angle"], p["inversion_efficiency"]
            ta, tb = p["ti"] - n / 2 * p["tx"], p["tr"] - p["ti"] - n / 2 * p["tx"]
            mz = 1.0
            for _ in range(200):
                m = 1 - (1 + eff * mz) * math.exp(-r1 * ta)  # inversion, then recovery for ta
                for k in range(n):
                    if k == n // 2:
                        centre = m
                    m = m * math.cos(a)
                    m = 1 - (1 - m) * math.exp(-r1 * p["tx"])
                mz = 1 - (1 - m) * math.exp(-r1 * tb)
            s = pd * math.sin(a) * centre * math.exp(-r2s * p["te"])
        values.append(gain * s)
    return torch.tensor(values, dtype=F64).reshape(maps["pd"].shape)


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_inplace_functional_and_reference_agree_and_inputs_stay_untouched(sequence, make_maps):
    """Eager in place (no autograd), eager functional (autograd) and the formulas written out give one image."""
    maps = make_maps((2, 3, 4), with_mt=True, seed=4)
    maps["b1"] = torch.linspace(0.6, 1.4, 24, dtype=F64).reshape(2, 3, 4)
    batch = sample_protocol(sequence, 3, generator=torch.Generator().manual_seed(17))
    before = {k: v.clone() for k, v in maps.items()}
    inplace = simulate(maps, sequence, batch, fused=False)
    assert all(torch.equal(maps[k], before[k]) for k in maps)
    grad_maps = {k: v.clone().requires_grad_(k == "pd") for k, v in maps.items()}
    functional = simulate(grad_maps, sequence, batch, fused=False)
    assert functional.requires_grad and not inplace.requires_grad
    torch.testing.assert_close(inplace, functional.detach(), rtol=1e-12, atol=1e-14)
    for b in range(3):
        reference = _reference_signal(sequence, maps, protocol_item(batch, b), maps["b1"]).abs()
        torch.testing.assert_close(inplace[b], reference, rtol=1e-9 if sequence == "mprage" else 1e-12, atol=1e-12)


def test_inplace_kernels_leave_inputs_untouched_and_write_only_out(make_maps):
    from mri_ssl.physics.inplace import INPLACE_KERNELS

    maps = make_maps((3, 4, 5), dtype=torch.float32, with_mt=True)
    resolved = dict(maps, r2=maps["r2s"])
    for sequence in SEQUENCES:
        protocol = sample_protocol(sequence, 2, generator=torch.Generator().manual_seed(3))
        map_values = tuple(resolved[name] for name in sequences.MAP_ARGUMENTS[sequence]) + (torch.tensor(1.0),)
        params = tuple(protocol[name] for name in sequences.PROTOCOL_ARGUMENTS[sequence])
        map_values, params = sequences.as_protocol_batch(map_values, params)
        *map_values, b1 = map_values
        args = (*map_values, *params, b1)
        copies = [a.clone() for a in args]
        out = torch.full((2, 3, 4, 5), float("nan"))
        returned = INPLACE_KERNELS[sequence](out, *args)
        assert returned is out and torch.isfinite(out).all()
        assert all(torch.equal(a, c) for a, c in zip(args, copies)), sequence
        reference = sequences.KERNELS[sequence](*args)
        assert _relative_difference(out, reference) <= 1e-5, sequence


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_default_path_supports_autograd(sequence, make_maps):
    """With maps that require grad, the default path is the functional kernel: gradients match finite differences."""
    maps = make_maps((2, 2, 2), with_mt=True)
    protocol = TYPICAL_PROTOCOLS[sequence]
    names = ("pd", "r1", "r2s")

    def image(pd, r1, r2s):
        return simulate(dict(maps, pd=pd, r1=r1, r2s=r2s), sequence, protocol, validate=False)

    inputs = tuple(maps[k].clone().requires_grad_(True) for k in names)
    before = [x.detach().clone() for x in inputs]
    assert torch.autograd.gradcheck(image, inputs)
    assert all(torch.equal(x.detach(), b) for x, b in zip(inputs, before))


def test_auto_rule_compiles_once_eager_time_reaches_the_budget(make_maps, monkeypatch):
    """fused=None: eager until the sequence's eager calls have taken AUTO_COMPILE_AFTER_S, then compiled."""
    monkeypatch.delenv(fused.DISABLE_ENV, raising=False)
    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "_failed", set())
    monkeypatch.setattr(fused, "_eager_seconds", {})
    compiles = []
    real_compile = torch.compile

    def counting_compile(fn, **kwargs):
        compiles.append(fn)
        return real_compile(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", counting_compile)
    maps = make_maps((3, 3, 3), dtype=torch.float32)
    protocol = TYPICAL_PROTOCOLS["fse"]
    expected = simulate(maps, "fse", protocol, fused=False)
    monkeypatch.setattr(fused, "AUTO_COMPILE_AFTER_S", 3600.0)
    for _ in range(3):
        assert torch.equal(simulate(maps, "fse", protocol), expected)
    (budget_key, spent), = fused._eager_seconds.items()  # one variant and signature: fse magnitude, 3x3x3 maps
    assert compiles == [] and budget_key.startswith("fse@cpu:float32:3x3x3") and 0 < spent < 3600.0
    monkeypatch.setattr(fused, "AUTO_COMPILE_AFTER_S", spent)  # the budget is now spent
    for _ in range(2):
        assert _relative_difference(simulate(maps, "fse", protocol), expected) <= 1e-6
    assert len(compiles) == 1  # compiled once, then reused
    # Another map size has its own budget: eager again, no compile, until its own calls have taken as long.
    other = make_maps((2, 3, 4), dtype=torch.float32)
    assert torch.equal(simulate(other, "fse", protocol), simulate(other, "fse", protocol, fused=False))
    assert len(compiles) == 1 and len(fused._eager_seconds) == 2
    compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler:
        assert fused.fused_available("fse")
    # fused=False never compiles, whatever the budget says.
    monkeypatch.setattr(fused, "AUTO_COMPILE_AFTER_S", 0.0)
    assert torch.equal(simulate(maps, "flair", TYPICAL_PROTOCOLS["flair"], fused=False),
                       simulate(maps, "flair", TYPICAL_PROTOCOLS["flair"], fused=False))
    assert len(compiles) == 1


@pytest.mark.parametrize("validate", [True, False], ids=["checked", "unchecked"])
def test_exponent_floor_holds_on_every_eager_path(validate, make_maps):
    """A long-TE FSE drives exp(-R2 TE) below float32's normal range: checked or not, the floor applies (no
    denormals) and the in-place image equals the functional kernel's."""
    maps = make_maps((4, 4, 4), dtype=torch.float32)
    maps["r2s"] = torch.linspace(1.0, 60.0, 64).reshape(4, 4, 4)  # R2* TE up to 150
    protocol = {"tr": 3.0, "te": 2.5}
    image = simulate(maps, "fse", protocol, fused=False, validate=validate)
    grad_maps = dict(maps, pd=maps["pd"].clone().requires_grad_(True))
    functional = simulate(grad_maps, "fse", protocol, fused=False, validate=validate).detach()
    tiny = torch.finfo(torch.float32).tiny
    assert bool(((image == 0) | (image.abs() >= tiny)).all()) and bool((image > 0).all())
    torch.testing.assert_close(image, functional, rtol=1e-6, atol=0.0)


def test_polynomial_exp2_matches_exp2_over_the_decays_range():
    """The compiled CPU path's exp2 agrees with float64 exp2 within relative 2e-7 (a few float32 ulp) from the
    exponent floor to 0 (every decay), and stays finite and accurate up to 2^127."""
    x = torch.cat([torch.linspace(sequences.SMALLEST_EXPONENT * sequences.LOG2_E, 0.0, 200_001),
                   torch.linspace(0.0, 127.0, 1_001), torch.tensor([-0.5, 0.5, -1.5, 1e-8, -1e-8])])
    exact = torch.exp2(x.double())
    for degree, bound in ((5, 2.0e-7), (6, 1.1e-7)):
        approximate = fused.polynomial_exp2(x, degree)
        assert approximate.dtype == torch.float32
        assert float(((approximate.double() - exact) / exact).abs().max()) <= bound, degree
    assert fused.polynomial_exp2(torch.tensor([0.0])).item() == 1.0
    assert torch.isfinite(fused.polynomial_exp2(torch.tensor([200.0]))).all()  # saturates at 2^127


def test_fused_kernels_match_closed_forms_and_compile_once_per_signature(make_maps, monkeypatch):
    """Fused results equal the textbook formulas (float64 closed forms) on float32 maps; new protocol values reuse
    the compiled kernel (no new graph); a new signature beyond STATIC_SIGNATURES shares one shape-generic compile."""
    monkeypatch.delenv(fused.DISABLE_ENV, raising=False)
    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "_failed", set())
    compiles = []
    real_compile = torch.compile

    def counting_compile(function, **kwargs):
        compiles.append((function.__name__, kwargs.get("dynamic")))
        return real_compile(function, **kwargs)

    monkeypatch.setattr(torch, "compile", counting_compile)
    maps = make_maps((5, 4, 3), dtype=torch.float32)
    m = {k: v.double() for k, v in maps.items()}
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    closed_forms = {
        "fse": lambda p: m["pd"] * (1 - torch.exp(-m["r1"] * p["tr"])) * torch.exp(-m["r2s"] * p["te"]),
        "flair": lambda p: (m["pd"] * torch.exp(-m["r2s"] * p["te"])
                            * (1 - 2 * torch.exp(-m["r1"] * p["ti"]) + torch.exp(-m["r1"] * p["tr"]))).abs(),
    }
    for sequence, closed_form in closed_forms.items():
        for seed in range(3):  # three protocols, one compile
            protocol = protocol_item(sample_protocol(sequence, 1, generator=torch.Generator().manual_seed(seed)), 0)
            image = simulate(maps, sequence, protocol, fused=True)
            torch.testing.assert_close(image.double(), closed_form(protocol), rtol=2e-6, atol=1e-7)
    compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler:
        assert fused.fused_available("fse") and fused.fused_available("flair")
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before == 2  # no recompilation
    assert [dynamic for _, dynamic in compiles] == [False, False]
    # Further signatures: with one static signature allowed, a second and a third shape share one dynamic compile.
    monkeypatch.setattr(fused, "STATIC_SIGNATURES", 1)
    protocol = TYPICAL_PROTOCOLS["fse"]
    for shape in ((3, 4, 5), (6, 2, 2)):
        other = make_maps(shape, dtype=torch.float32)
        torch.testing.assert_close(simulate(other, "fse", protocol, fused=True),
                                   simulate(other, "fse", protocol, fused=False), rtol=1e-5, atol=1e-7)
    assert [dynamic for _, dynamic in compiles] == [False, False, True]
    # float64 maps get a shape-generic compile of their own, with torch's exp2 (the polynomial is float32-accurate).
    double = make_maps((3, 4, 5), dtype=torch.float64)
    torch.testing.assert_close(simulate(double, "fse", protocol, fused=True),
                               simulate(double, "fse", protocol, fused=False), rtol=1e-12, atol=0.0)
    assert [dynamic for _, dynamic in compiles] == [False, False, True, True]
