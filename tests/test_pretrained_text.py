"""Local pretrained Hugging Face text model as the report encoder: a tiny 2-layer BERT the test saves itself
(nothing downloaded), loading, maths against the model run directly, checkpoints, and bad directories."""

from __future__ import annotations

import pytest
import torch

from mri_ssl.errors import InputError
from mri_ssl.text.pretrained import PretrainedTokenizer, check_model_dir

REPORTS = ["The left ventricle is dilated with reduced function, EF 39%.", "Normal LV size. EF 62%.",
           "Patchy late enhancement of the mid inferior septum."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def save_tiny_bert(folder, seed: int = 0):
    """A 2-layer, 16-wide BERT and a WordPiece tokenizer over the report words, written with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = sorted({w for r in REPORTS for w in r.lower().replace(",", " , ").replace(".", " . ")
                   .replace("%", " % ").split()} | set("0123456789") | {f"##{d}" for d in "0123456789"})
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                                     cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tokenizer.save_pretrained(str(folder))
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, pad_token_id=0)
    torch.manual_seed(seed)
    transformers.BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def test_tokenizer_pads_and_truncates_to_max_length(bert_dir):
    tok = PretrainedTokenizer(bert_dir, max_length=12)
    ids = tok(REPORTS)
    assert ids.shape == (3, 12) and ids.dtype == torch.long
    assert (ids[:, 0] == 2).all()  # [CLS]
    short = tok("Normal LV size.")[0].tolist()
    assert short[:6] == [2] + tok.tokenizer.convert_tokens_to_ids(["normal", "lv", "size", "."]) + [3]
    assert short[6:] == [tok.pad_id] * 6 and tok.pad_id == 0
    assert 1 not in ids[1].tolist()  # every word of the reports is in the vocabulary (no [UNK])


def test_encoder_is_the_saved_model_first_token_output(bert_dir):
    import transformers

    from mri_ssl.text.pretrained import PretrainedTextEncoder

    encoder = PretrainedTextEncoder(bert_dir, pad_token_id=0, max_length=16).eval()
    reference = transformers.AutoModel.from_pretrained(str(bert_dir), local_files_only=True).eval()
    ids = PretrainedTokenizer(bert_dir, max_length=16)(REPORTS)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state[:, 0]
        torch.testing.assert_close(encoder(ids), expected)
        assert encoder.width == 16 and encoder(ids).shape == (3, 16)
        # padding is masked: the same report padded to 16 or to 10 positions gives the same feature
        short = PretrainedTokenizer(bert_dir, max_length=10)(REPORTS[1])
        torch.testing.assert_close(encoder(short), encoder(ids[1:2]), atol=1e-5, rtol=1e-5)


def test_video_text_model_uses_the_pretrained_weights_and_checkpoints_rebuild_it(bert_dir, tmp_path):
    import transformers

    from mri_ssl.engines.checkpoint import save_checkpoint
    from mri_ssl.engines.video_text import build_video_text_model, checkpoint_extras, load_video_text_model
    from mri_ssl.text.tokenizer_state import build_text_tokenizer
    from mri_ssl.text.pretrained import PretrainedTextEncoder

    tok = build_text_tokenizer(["ignored: the model's own vocabulary is used"], 16, str(bert_dir))
    config = {"embed_dim": 32, "video_config": {"cnn_features": [4, 8], "temporal_layers": 1, "temporal_heads": 2},
              "text_config": {"width": 64, "layers": 3, "heads": 4, "pretrained_dir": str(bert_dir)}}
    model = build_video_text_model(tok, **config)
    assert isinstance(model.text_encoder, PretrainedTextEncoder) and model.text_projection.in_features == 16
    saved = transformers.AutoModel.from_pretrained(str(bert_dir), local_files_only=True).state_dict()
    for name, tensor in model.text_encoder.model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], msg=name)
    with torch.no_grad():  # "fine-tune": the checkpoint's weights, not the directory's, must come back
        model.text_encoder.model.embeddings.word_embeddings.weight.mul_(1.5)
    save_checkpoint({"network": model.state_dict(), **checkpoint_extras(tok, config)}, tmp_path / "final.pt")
    loaded, loaded_tok = load_video_text_model(tmp_path / "final.pt")
    assert isinstance(loaded_tok, PretrainedTokenizer) and torch.equal(loaded_tok(REPORTS), tok(REPORTS))
    model.eval()
    torch.testing.assert_close(loaded.embed_text(tok(REPORTS)), model.embed_text(tok(REPORTS)))


def test_bad_model_directories_are_named(tmp_path):
    with pytest.raises(InputError, match="not found") as caught:
        check_model_dir(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(caught.value)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="not a file"):
        check_model_dir(tmp_path / "file.txt")
    with pytest.raises(InputError, match="no config.json"):
        check_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="no model weights"):
        check_model_dir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="no tokenizer files"):
        check_model_dir(tmp_path)


def test_broken_weights_are_an_input_error_naming_the_directory(bert_dir, tmp_path):
    from mri_ssl.text.pretrained import PretrainedTextEncoder

    broken = tmp_path / "broken"
    broken.mkdir()
    for path in bert_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(InputError, match="cannot load the model") as caught:
        PretrainedTextEncoder(broken)
    assert str(broken) in str(caught.value)


def test_missing_transformers_says_which_extra_to_install(bert_dir, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(InputError, match=r"pip install 'mri_ssl\[text\]'"):
        PretrainedTokenizer(bert_dir)
