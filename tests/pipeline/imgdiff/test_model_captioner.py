"""A local image-to-text model as the difference captioner: a tiny VisionEncoderDecoder (ViT +
BERT decoder, random weights) built from configs and saved as a folder, then named in the recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.stage import ConfigError
from pipeline.imgdiff.captions import ModelCaptioner, captioner

WORDS = ["red", "green", "apple", "pear", "a", "on", "the", "left", "table"]


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory):
    from transformers import BertConfig, BertTokenizer, ViTConfig, ViTImageProcessor, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    folder = tmp_path_factory.mktemp("captioner")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizer(str(vocab))
    encoder = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    decoder = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         is_decoder=True, add_cross_attention=True)
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder))
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder, model.eval(), tokenizer


def test_the_model_captions_the_top_boxes_crops(tiny_captioner):
    folder, model, tokenizer = tiny_captioner
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    b = a.copy()
    b[32:64, 0:32] = 255 - b[32:64, 0:32]
    cap = captioner(str(folder))
    assert isinstance(cap, ModelCaptioner)
    text = cap.caption(a, b, [(0, 32, 32, 64), (64, 0, 96, 32)], "red apple", "green apple")

    # what the saved model says of each crop, asked directly through transformers
    from transformers import ViTImageProcessor

    pixels = ViTImageProcessor.from_pretrained(folder)(images=[a[32:64, 0:32], b[32:64, 0:32]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        said = [t.strip() for t in tokenizer.batch_decode(model.generate(pixel_values=pixels, max_new_tokens=24, do_sample=False, num_beams=1), skip_special_tokens=True)]
    assert all(said)  # the random model does say something, so the sentence below is its own words
    first, second = said
    assert text == f"on the left: {first} in the first image, {second} in the second; also changed at the top right"
    assert all(word in WORDS for word in " ".join(said).split())  # the crop captions come from the model's own vocabulary
    assert cap.caption(a, b, [], "x", "y") == ""


def test_a_folder_that_is_no_model_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown captioner 'nowhere'.*local folder"):
        captioner("nowhere")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"imgdiff.captioner: .*: not a loadable image-to-text model"):
        captioner(str(tmp_path)).caption(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), [(0, 0, 4, 4)], "a", "b")
