"""CNNEncoder3D, ProjectionHead and Reconstructor: shapes of the paper's architecture, slim copies, 2-D, errors."""

import pytest
import torch
from torch import nn

from mri_ssl.errors import InputError
from mri_ssl.metrics.representation_probe import projection_spread
from mri_ssl.networks import (PAPER_FEATURES, CAMClassifier, CNNEncoder3D, ContrastiveReconstructionModel,
                              FrozenEncoderUNet, ProjectionHead, Reconstructor, SequenceClassifier)

SLIM = (4, 8, 8, 16, 16)


def count(module, kind):
    return sum(isinstance(m, kind) for m in module.modules())


def test_paper_encoder_layout():
    encoder = CNNEncoder3D()
    assert encoder.features == PAPER_FEATURES and encoder.out_features == 768
    assert count(encoder, nn.Conv3d) == 10  # 5 stages x 2 convolutions
    assert count(encoder, nn.InstanceNorm3d) == 10 and count(encoder, nn.GELU) == 10
    dropouts = [m for m in encoder.modules() if isinstance(m, nn.Dropout3d) or isinstance(m, nn.Dropout)]
    assert len(dropouts) == 10 and all(d.p == pytest.approx(0.2) for d in dropouts)
    # Within a block the order is conv -> norm -> act -> dropout.
    block = encoder.stages[0][0]
    names = [type(m).__name__ for m in block.modules() if not list(m.children())]
    assert names.index("Conv3d") < names.index("InstanceNorm3d") < names.index("GELU") < names.index("Dropout")


def test_stage_maps_have_the_unet_skip_shapes():
    encoder = CNNEncoder3D(features=SLIM).eval()
    x = torch.randn(2, 1, 32, 48, 16)
    pooled, stages = encoder(x, return_stages=True)
    assert pooled.shape == (2, 16)
    assert [tuple(s.shape) for s in stages] == [
        (2, 4, 32, 48, 16), (2, 8, 16, 24, 8), (2, 8, 8, 12, 4), (2, 16, 4, 6, 2), (2, 16, 2, 3, 1)]
    torch.testing.assert_close(pooled, stages[-1].mean(dim=(2, 3, 4)))
    torch.testing.assert_close(encoder(x), pooled)
    assert encoder.downsampling_factor == 16


def test_two_dimensional_encoder():
    encoder = CNNEncoder3D(spatial_dims=2, in_channels=3, features=(4, 8, 12))
    assert count(encoder, nn.Conv2d) == 6
    assert encoder(torch.randn(3, 3, 20, 20)).shape == (3, 12)


def test_eval_mode_is_deterministic_and_train_mode_drops_out():
    torch.manual_seed(0)
    encoder = CNNEncoder3D(features=(4, 8), dropout=0.5)
    x = torch.randn(2, 1, 8, 8, 8)
    encoder.eval()
    torch.testing.assert_close(encoder(x), encoder(x))
    encoder.train()
    assert not torch.allclose(encoder(x), encoder(x))


def test_config_rebuilds_the_same_network():
    encoder = CNNEncoder3D(features=(4, 8, 8), dropout=0.1)
    rebuilt = CNNEncoder3D(**encoder.config())
    rebuilt.load_state_dict(encoder.state_dict())
    x = torch.randn(1, 1, 8, 8, 8)
    torch.testing.assert_close(rebuilt.eval()(x), encoder.eval()(x))


def test_projection_head_and_reconstructor_shapes():
    head = ProjectionHead()
    assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [512, 128]
    assert head(torch.randn(4, 768)).shape == (4, 128)
    reconstructor = Reconstructor()
    transposed = [m for m in reconstructor.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert [(m.in_channels, m.out_channels, m.stride) for m in transposed] == [
        (768, 384, (2, 2, 2)), (384, 192, (2, 2, 2)), (192, 96, (2, 2, 2)), (96, 48, (2, 2, 2))]
    final = [m for m in reconstructor.modules() if isinstance(m, nn.Conv3d)][-1]
    assert final.kernel_size == (1, 1, 1) and final.out_channels == 1


def test_projection_head_batch_norm_is_opt_in_and_keeps_the_default_module_indices():
    plain, normed = ProjectionHead(), ProjectionHead(batch_norm=True)
    assert [type(m).__name__ for m in plain] == ["Linear", "GELU", "Linear"]  # weights saved before the option load
    assert [type(m).__name__ for m in normed] == ["Linear", "BatchNorm1d", "GELU", "Linear"]
    assert set(plain.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_projection_batch_norm_spreads_features_that_share_a_large_offset():
    # Pooled features of an instance-normalised encoder: one shared vector plus small per-crop differences. Without
    # batch norm the head maps them to nearly one direction; with it each hidden unit is centred and scaled over the
    # batch, so the crops' differences reach the output.
    torch.manual_seed(0)
    features = 5.0 * torch.randn(1, 64) + 0.01 * torch.randn(32, 64)
    spreads = {}
    for batch_norm in (False, True):
        torch.manual_seed(1)
        head = ProjectionHead(64, 32, 16, batch_norm=batch_norm).train()
        spreads[batch_norm] = projection_spread(head(features))
    assert spreads[False] < 0.01
    assert spreads[True] > 0.1 > 10 * spreads[False]


def test_slim_encoder_and_reconstructor_round_trip_the_input_size():
    encoder = CNNEncoder3D(features=SLIM)
    reconstructor = Reconstructor(in_channels=16, channels=(16, 8, 8, 4))
    x = torch.randn(1, 1, 32, 32, 32)
    _, stages = encoder(x, return_stages=True)
    assert reconstructor(stages[-1]).shape == x.shape


def pretraining_model(spatial_dims, channels_last=True):
    torch.manual_seed(0)
    return ContrastiveReconstructionModel(spatial_dims, features=(4, 8, 8), dropout=0.0, projection_hidden=8,
                                          projection_dim=4, reconstruction_channels=(8, 4), channels_last=channels_last)


def convolution_weights(module):
    return [m.weight for m in module.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) and m.in_channels > 1]


def test_pretraining_model_is_channels_last_in_3d_with_the_contiguous_outputs_and_gradients():
    """Channels-last changes the memory order (a CPU speed-up), not the maths: the same weights give the same
    features, projections, reconstruction and weight gradients as the contiguous layout."""
    fast, reference = pretraining_model(3), pretraining_model(3, channels_last=False)
    reference.load_state_dict(fast.state_dict())
    assert convolution_weights(fast) and all(w.is_contiguous(memory_format=torch.channels_last_3d)
                                             for w in convolution_weights(fast))
    assert all(w.is_contiguous() for w in convolution_weights(reference))
    x = torch.randn(4, 1, 16, 16, 16)
    outputs = [model(x) for model in (fast, reference)]
    assert outputs[0]["reconstruction"].shape == x.shape
    for key in ("features", "projection", "reconstruction"):
        torch.testing.assert_close(outputs[0][key], outputs[1][key], rtol=1e-4, atol=1e-5)
    for output in outputs:
        (output["projection"].square().sum() + (output["reconstruction"] - x).abs().mean()).backward()
    for (name, a), b in zip(fast.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_two_dimensional_pretraining_model_keeps_the_default_layout():
    model = pretraining_model(2)
    assert not model.channels_last
    assert all(w.is_contiguous() for w in (m.weight for m in model.modules() if isinstance(m, nn.Conv2d)))
    assert model(torch.randn(2, 1, 16, 16))["reconstruction"].shape == (2, 1, 16, 16)


@pytest.mark.parametrize("kwargs, name", [
    ({"spatial_dims": 4}, "spatial_dims"),
    ({"features": ()}, "features"),
    ({"features": (4, 0)}, "features"),
    ({"dropout": 1.0}, "dropout"),
])
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(InputError) as error:
        CNNEncoder3D(**kwargs)
    assert error.value.source == name


def test_encoder_norm_option_is_exported_and_batch_norm_keeps_pooled_features_apart():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    instance = CNNEncoder3D(2, 3, (4, 8, 8), dropout=0.0)
    batch = CNNEncoder3D(2, 3, (4, 8, 8), dropout=0.0, norm="batch")
    assert instance.config()["norm"] == "INSTANCE" and batch.config()["norm"] == "BATCH"
    assert CNNEncoder3D(**batch.config()).norm == "BATCH"
    # Instance norm right before pooling leaves nearly the same pooled feature for every image; batch norm does not.
    assert float(batch(x).std(dim=0).mean()) > 3 * float(instance(x).std(dim=0).mean())
    with pytest.raises(InputError, match="norm"):
        CNNEncoder3D(2, 3, (4,), norm="group")


@pytest.mark.parametrize("build, shape", [
    (lambda: CNNEncoder3D(features=(4, 8, 8)), (1, 1, 16, 16, 16)),
    (lambda: FrozenEncoderUNet(out_channels=3, decoder_features=(8, 8, 4, 4), encoder_config={"features": (4, 8, 8)}),
     (1, 1, 16, 16, 16)),
    (lambda: CAMClassifier(encoder_config={"features": (4, 8)}), (2, 3, 16, 16)),
    (lambda: SequenceClassifier(encoder="", encoder_config={"img_size": 24, "patch_size": 12, "hidden_size": 16,
                                                            "mlp_dim": 16, "num_layers": 1, "num_heads": 2},
                                num_classes=5), (2, 1, 24, 24)),
], ids=["encoder", "frozen_unet", "cam_classifier", "sequence_classifier"])
def test_bundle_networks_script_like_eager(build, shape):
    """MONAI's ckpt_export (the model zoo's TorchScript check) scripts, not traces: every bundle network scripts and
    the scripted module computes what the eager one does."""
    torch.manual_seed(0)
    network = build().eval()
    scripted = torch.jit.script(network)
    x = torch.rand(shape)
    with torch.no_grad():
        assert torch.allclose(scripted(x), network(x), atol=1e-5)
