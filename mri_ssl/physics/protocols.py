"""Random acquisition protocols and their validation.

The distributions are those of Appendix A of Chalcroft et al., "Unified 3D MRI Representations via
Sequence-Invariant Contrastive Learning" (MIDL 2025), read with the physics in mind:

================  =====================================================================================
sequence          parameters (seconds, radians)
================  =====================================================================================
FLAIR             TE ~ 10^N(log10 0.02, |log10 0.1|), TR ~ 10^U(log10 0.001, log10 5),
                  TI ~ 10^U(log10 0.001, log10 3)
FSE               TE ~ 10^U(log10 0.001, log10 3), TR ~ 10^U(log10 0.001, log10 3)
MPRAGE            TR ~ N(2.3, 0.23), TI ~ U(0.6, 0.9), TX ~ U(0.004, 0.008), TE ~ U(0.002, 0.004),
                  flip ~ U(5 deg, 12 deg), n = 160 excitations, inversion efficiency 0.96
GRE               TE ~ 10^U(log10 0.002, log10 0.08), TR ~ 10^U(log10 0.005, log10 5), flip ~ U(5 deg, 50 deg)
================  =====================================================================================

Two slips of the paper's text are corrected: the MPRAGE TR printed as N(23, 2.3) s is a unit slip for a TR around
2.3 s (a 23 s MPRAGE does not exist), and the FLAIR log-std printed as log10(0.1) = -1 is taken as its absolute
value, one decade. The paper's sequence count (n) is not given; 160 is a typical whole-brain partition count.

Unlike the reference implementation, which drew TI > TR for about half its FLAIR protocols and TE > TR for a fifth of
its GRE ones, every protocol returned here is physically consistent (see ``check_protocol``): an inconsistent draw is
discarded and drawn again, which keeps each distribution's shape on the consistent region.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from mri_ssl.errors import ProtocolError

SEQUENCES = ("fse", "gre", "flair", "mprage")

MPRAGE_EXCITATIONS = 160
MPRAGE_INVERSION_EFFICIENCY = 0.96

# The parameters each sequence's protocol holds, with a one-line meaning for error messages and CLI help.
PROTOCOL_PARAMETERS = {
    "fse": {"tr": "repetition time (s)", "te": "echo time (s)"},
    "gre": {"tr": "repetition time (s)", "te": "echo time (s)", "flip_angle": "flip angle (rad)"},
    "flair": {"tr": "repetition time (s)", "te": "echo time (s)", "ti": "inversion time (s)"},
    "mprage": {
        "tr": "time between inversions (s)",
        "ti": "inversion to k-space centre (s)",
        "tx": "excitation spacing (s)",
        "te": "echo time (s)",
        "flip_angle": "flip angle (rad)",
        "n": "excitations per train",
        "inversion_efficiency": "inversion efficiency in (0, 1]",
    },
}

# A typical clinical protocol per sequence at 3 T, used where a user asks for a sequence without parameters.
TYPICAL_PROTOCOLS = {
    "fse": {"tr": 4.0, "te": 0.09},  # T2-weighted
    "gre": {"tr": 0.025, "te": 0.005, "flip_angle": math.radians(25.0)},  # T1-weighted FLASH
    "flair": {"tr": 9.0, "te": 0.09, "ti": 2.5},
    "mprage": {
        "tr": 2.3,
        "ti": 0.9,
        "tx": 0.007,
        "te": 0.003,
        "flip_angle": math.radians(9.0),
        "n": float(MPRAGE_EXCITATIONS),
        "inversion_efficiency": MPRAGE_INVERSION_EFFICIENCY,
    },
}


def check_sequence(sequence: str) -> str:
    """Return the sequence name in lower case, or raise ``ProtocolError`` naming the known ones."""
    name = str(sequence).lower()
    if name not in SEQUENCES:
        raise ProtocolError("sequence", f"unknown sequence {sequence!r}; expected one of {', '.join(SEQUENCES)}")
    return name


def _values(protocol: Mapping, key: str) -> torch.Tensor:
    return torch.as_tensor(protocol[key], dtype=torch.float64).reshape(-1).cpu()


def _broadcast_values(sequence: str, protocol: Mapping) -> dict[str, torch.Tensor]:
    """Every parameter of ``sequence`` as a 1-D float64 tensor, scalars broadcast to the batch length."""
    keys = list(PROTOCOL_PARAMETERS[sequence])
    size = protocol_size({key: protocol[key] for key in keys})
    return {key: _values(protocol, key).expand(size) for key in keys}


def _first_bad(values: torch.Tensor, bad: torch.Tensor) -> str:
    index = int(torch.nonzero(bad)[0])
    where = f" (protocol {index} of {values.numel()})" if values.numel() > 1 else ""
    return f"{float(values[index]):.6g}{where}"


def _rules(sequence: str, v: dict[str, torch.Tensor]):
    """Every physical rule of ``sequence`` as ``(parameter, mask of the protocols that break it, sentence)``.

    The one list behind both ``consistency_mask`` (which protocols pass) and ``check_protocol`` (the first
    failure, in this order, as an error).
    """
    expected = PROTOCOL_PARAMETERS[sequence]
    for key, values in v.items():
        yield key, ~torch.isfinite(values), f"{expected[key]} must be finite"
    for key in ("tr", "te", "ti", "tx"):
        if key in v:
            yield key, v[key] <= 0, f"{expected[key]} must be > 0"
    yield "te", v["te"] >= v["tr"], "echo time must be shorter than the repetition time tr"
    if "flip_angle" in v:
        flip = v["flip_angle"]
        yield "flip_angle", (flip <= 0) | (flip > math.pi), "flip angle must be in (0, pi] radians"
    if sequence == "flair":
        yield "ti", v["ti"] >= v["tr"], "inversion time must be shorter than the repetition time tr"
        yield "ti", v["ti"] + v["te"] >= v["tr"], "ti + te must be shorter than tr (echo before the next inversion)"
    if sequence == "mprage":
        half_train = 0.5 * v["n"] * v["tx"]
        yield "n", (v["n"] < 2) | (torch.remainder(v["n"], 2) != 0), (
            "the readout train needs an even number of excitations (>= 2) so that its k-space centre is excitation n/2")
        yield "te", v["te"] >= v["tx"], "echo time must be shorter than the excitation spacing tx"
        yield "ti", v["ti"] - half_train <= 0, (
            "ti must exceed half the readout train (n * tx / 2) so the preparation delay is positive")
        yield "tr", v["tr"] - v["ti"] - half_train <= 0, (
            "tr must exceed ti + n * tx / 2 so the recovery delay is positive")
        efficiency = v["inversion_efficiency"]
        yield "inversion_efficiency", (efficiency <= 0) | (efficiency > 1), "inversion efficiency must be in (0, 1]"


def consistency_mask(sequence: str, protocol: Mapping) -> torch.Tensor:
    """A boolean tensor, one per protocol of a batch: True where the protocol is physically consistent."""
    sequence = check_sequence(sequence)
    v = _broadcast_values(sequence, protocol)
    ok = torch.ones_like(v["tr"], dtype=torch.bool)
    for _, bad, _ in _rules(sequence, v):
        ok &= ~bad
    return ok


def check_protocol(sequence: str, protocol: Mapping) -> None:
    """Raise ``ProtocolError`` naming the first inconsistent parameter and its value; return None when all is well.

    Rules: every parameter given and finite; times positive; TE < TR; flip angle in (0, pi]; FLAIR TI + TE < TR
    (so TI < TR); MPRAGE TE < TX, ``n`` an even number >= 2 (the centre is excitation n/2), a positive delay
    between inversion and the first excitation (TI > n TX / 2) and between the last excitation and the next
    inversion (TR > TI + n TX / 2), inversion efficiency in (0, 1].
    """
    sequence = check_sequence(sequence)
    expected = PROTOCOL_PARAMETERS[sequence]
    missing = [key for key in expected if key not in protocol]
    if missing:
        raise ProtocolError(
            missing[0], f"{sequence} needs {', '.join(missing)} ({'; '.join(expected[k] for k in missing)})"
        )
    v = _broadcast_values(sequence, protocol)
    for key, bad, sentence in _rules(sequence, v):
        if bad.any():
            raise ProtocolError(key, f"{sequence}: {sentence}; got {key} = {_first_bad(v[key], bad)}")


def _log_uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return 10.0 ** (math.log10(low) + u * (math.log10(high) - math.log10(low)))


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _draw(sequence: str, n: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Draw ``n`` protocols from the paper's distributions, without any consistency check."""
    if sequence == "flair":
        log_te = math.log10(0.02) + abs(math.log10(0.1)) * torch.randn(n, generator=generator, dtype=torch.float64)
        return {
            "te": 10.0**log_te,
            "tr": _log_uniform(n, 0.001, 5.0, generator),
            "ti": _log_uniform(n, 0.001, 3.0, generator),
        }
    if sequence == "fse":
        return {"te": _log_uniform(n, 0.001, 3.0, generator), "tr": _log_uniform(n, 0.001, 3.0, generator)}
    if sequence == "gre":
        return {
            "te": _log_uniform(n, 0.002, 0.08, generator),
            "tr": _log_uniform(n, 0.005, 5.0, generator),
            "flip_angle": _uniform(n, math.radians(5.0), math.radians(50.0), generator),
        }
    # mprage
    return {
        "tr": (2.3 + 0.23 * torch.randn(n, generator=generator, dtype=torch.float64)).abs(),
        "ti": _uniform(n, 0.6, 0.9, generator),
        "tx": _uniform(n, 0.004, 0.008, generator),
        "te": _uniform(n, 0.002, 0.004, generator),
        "flip_angle": _uniform(n, math.radians(5.0), math.radians(12.0), generator),
        "n": torch.full((n,), float(MPRAGE_EXCITATIONS), dtype=torch.float64),
        "inversion_efficiency": torch.full((n,), MPRAGE_INVERSION_EFFICIENCY, dtype=torch.float64),
    }


def sample_protocol(
    sequence: str, n: int = 1, generator: torch.Generator | None = None, max_rounds: int = 1000
) -> dict[str, torch.Tensor]:
    """Draw ``n`` physically consistent protocols of ``sequence`` from the paper's distributions.

    Args:
        sequence: one of ``fse``, ``gre``, ``flair``, ``mprage``.
        n: how many protocols; every returned value is a float64 tensor of shape ``(n,)``.
        generator: a CPU ``torch.Generator`` for reproducible draws (the global RNG when None).
        max_rounds: safety bound on redraw rounds (acceptance rates are above 30 %, so a handful suffice).

    Returns:
        A dict from parameter name (see ``PROTOCOL_PARAMETERS``) to values; pass it to ``simulate``.
    """
    sequence = check_sequence(sequence)
    if int(n) < 1:
        raise ProtocolError("n", f"number of protocols must be >= 1, got {n}")
    n = int(n)
    accepted: dict[str, list[torch.Tensor]] = {key: [] for key in PROTOCOL_PARAMETERS[sequence]}
    count = 0
    for _ in range(max_rounds):
        draw = _draw(sequence, max(n - count, 16), generator)
        ok = consistency_mask(sequence, draw)
        take = torch.nonzero(ok).flatten()[: n - count]
        for key in accepted:
            accepted[key].append(draw[key][take])
        count += int(take.numel())
        if count == n:
            return {key: torch.cat(parts) for key, parts in accepted.items()}
    raise RuntimeError(f"sample_protocol({sequence!r}): could not draw {n} consistent protocols")


def protocol_item(protocol: Mapping, index: int) -> dict[str, float]:
    """Protocol ``index`` of a batch as plain floats (for metadata, file headers and logs)."""
    return {key: float(_values(protocol, key)[index]) for key in protocol}


def protocol_size(protocol: Mapping) -> int:
    """How many protocols a (possibly batched) protocol dict holds; scalars count as one."""
    sizes = {int(_values(protocol, key).numel()) for key in protocol}
    sizes.discard(1)
    if len(sizes) > 1:
        raise ProtocolError("protocol", f"batched parameters disagree in length: {sorted(sizes)}")
    return sizes.pop() if sizes else 1
