"""ShortTextCLIP: dropping the padding every caption of a batch shares changes no feature and no
gradient, the checkpoint stays open_clip's, and towers where it would change something keep open_clip's class."""

import open_clip
import pytest
import torch

from pipeline.models import factory as M

CAPTIONS = ["cat", "grinning face with big eyes", "flag: united kingdom", "woman technologist: medium-dark skin tone"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return M.create_model("foil-tiny-vit")


def test_trim_padding_drops_only_columns_padded_in_every_row():
    tokens = torch.tensor([[5, 7, 0, 0, 0], [5, 8, 9, 0, 0]])
    assert M.trim_padding(tokens).tolist() == [[5, 7, 0], [5, 8, 9]]
    assert M.trim_padding(torch.zeros(2, 4, dtype=torch.long)).shape == (2, 1)
    full = torch.ones(3, 4, dtype=torch.long)
    assert M.trim_padding(full).shape == (3, 4)


def test_short_captions_give_open_clips_features_and_gradients(model):
    assert isinstance(model, M.ShortTextCLIP) and isinstance(model, open_clip.CLIP)
    tokens = M.tokenizer("foil-tiny-vit")(CAPTIONS)  # [4, 32]
    short = M.trim_padding(tokens)
    assert short.shape[1] < tokens.shape[1] // 2  # the captions fill under half the context

    def run(encode, text):
        model.zero_grad(set_to_none=True)
        features = encode(model, text, normalize=True)
        (features * torch.arange(features.shape[1])).sum().backward()
        return features.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want, want_grads = run(open_clip.CLIP.encode_text, tokens)  # open_clip's own text path, full context
    got, got_grads = run(M.ShortTextCLIP.encode_text, short)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert want_grads.keys() == got_grads.keys() and "token_embedding.weight" in got_grads
    for name, want_grad in want_grads.items():  # float rounding only, relative to the largest entry
        assert (got_grads[name] - want_grad).abs().max() <= 1e-5 * want_grad.abs().max(), name
    # the padding's positions never reached the pooled token, in either path
    assert want_grads["positional_embedding"][short.shape[1]:].abs().max() == 0


def test_cpu_captions_are_trimmed_inside_the_model(model):
    tokens = M.tokenizer("foil-tiny-vit")(CAPTIONS)
    seen = []
    handle = model.token_embedding.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            model.encode_text(tokens)
    finally:
        handle.remove()
    assert seen == [M.trim_padding(tokens).shape[1]]


def test_checkpoint_is_open_clips(model, tmp_path):
    path = tmp_path / "model.pt"
    M.save_open_clip_checkpoint(model, path, 0, "foil-tiny-vit")
    reloaded = M.create_model("foil-tiny-vit", pretrained=str(path))
    assert isinstance(reloaded, M.ShortTextCLIP)
    plain = open_clip.create_model("foil-tiny-vit", pretrained=str(path), output_dict=True)
    assert type(plain) is open_clip.CLIP
    tokens = M.tokenizer("foil-tiny-vit")(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_text(tokens), plain.encode_text(tokens), atol=1e-5, rtol=1e-4)


def test_towers_that_would_see_the_padding_keep_open_clips_class():
    cfg = M.model_config("foil-tiny-vit")
    last = open_clip.CLIP(cfg["embed_dim"], cfg["vision_cfg"], {**cfg["text_cfg"], "pool_type": "last"})
    unmasked = open_clip.CLIP(cfg["embed_dim"], cfg["vision_cfg"], {**cfg["text_cfg"], "no_causal_mask": True})
    for model in (last, unmasked):
        assert type(M._with_short_text(model, "foil-tiny-vit")) is open_clip.CLIP
        tokens = torch.tensor([[1, 2, 0, 0]])
        assert M.trim_text_for(model, tokens) is tokens
