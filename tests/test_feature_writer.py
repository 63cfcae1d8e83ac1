"""FeatureWriter (the pretraining bundle's inference): the CSV holds exactly the encoder's pooled features."""

import csv

import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer

from mri_ssl.engines import FeatureWriter, export_encoder, load_encoder_weights
from mri_ssl.errors import InputError
from mri_ssl.networks import CNNEncoder3D


def test_feature_rows_equal_the_encoder_output(tmp_path):
    torch.manual_seed(0)
    encoder = CNNEncoder3D(features=[2, 4, 4], dropout=0.0).eval()
    volumes = [MetaTensor(torch.rand(1, 8, 8, 8), meta={"filename_or_obj": f"case{i}.nii.gz"}) for i in range(3)]
    writer = FeatureWriter(tmp_path / "features.csv")
    loader = DataLoader(Dataset([{"image": v} for v in volumes]), batch_size=1)
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=loader, network=encoder, inferer=SimpleInferer(),
                                    val_handlers=[writer])
    evaluator.run()
    with open(tmp_path / "features.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["file", "feature_0", "feature_1", "feature_2", "feature_3"]
    assert [r[0] for r in rows[1:]] == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]
    with torch.no_grad():
        expected = encoder(torch.stack([v.as_tensor() for v in volumes]))
    torch.testing.assert_close(torch.tensor([[float(x) for x in r[1:]] for r in rows[1:]]), expected,
                               rtol=1e-5, atol=1e-6)  # the CSV keeps 6 significant digits


def test_load_encoder_weights_names_the_file_when_shapes_differ(tmp_path):
    path = export_encoder(CNNEncoder3D(features=[2, 4, 4]), tmp_path / "encoder_final.pt")
    network = CNNEncoder3D(features=[2, 4, 4])
    assert load_encoder_weights(network, path) is network
    with pytest.raises(InputError, match="encoder_final.*exported with config"):
        load_encoder_weights(CNNEncoder3D(features=[2, 4, 8]), path)
