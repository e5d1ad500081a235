"""The `train` recipe section is validated without torch, against the same names the trainer uses."""

from __future__ import annotations

import pytest

from pipeline.core.stage import ConfigError
from pipeline.models import factory as M
from pipeline.models.architectures import architecture_config, architecture_names
from training.config import LOSS_NAMES, TrainConfig
from training.losses import LOSSES


def test_loss_names_are_the_losses_keys():
    assert tuple(LOSSES) == LOSS_NAMES


def test_light_architecture_lookup_agrees_with_open_clip_registry():
    import open_clip

    M.register_foil_configs()
    assert set(architecture_names()) == set(open_clip.list_models())
    for name in ("foil-tiny-vit", "foil-tiny-vit-sigmoid", "ViT-B-32", M.REAL_TWO_TOWER):
        assert architecture_config(name) == M.model_config(name), name


def test_train_section_errors_name_the_field():
    with pytest.raises(ConfigError, match="train.model: unknown model 'nope'"):
        TrainConfig.from_dict({"model": "nope"})
    with pytest.raises(ConfigError, match="train.loss: siglip needs a model with init_logit_bias"):
        TrainConfig.from_dict({"model": "foil-tiny-vit", "loss": "siglip"})
    assert TrainConfig.from_dict({"model": "foil-tiny-vit-sigmoid", "loss": "siglip"}).loss == "siglip"
    with pytest.raises(ConfigError, match="train.freeze_bn_stats: must be true, false or null, got 'yes'"):
        TrainConfig.from_dict({"freeze_bn_stats": "yes"})


def test_batch_norm_statistics_are_kept_for_towers_that_start_from_real_weights():
    def frozen(**fields) -> bool:
        return TrainConfig.from_dict(fields).loop_config(bf16=False).freeze_bn_stats

    assert frozen(model=M.REAL_TWO_TOWER) and frozen(model="foil-tiny-vit", pretrained="/weights/tiny.pt")
    assert not frozen(model="foil-tiny-vit")  # from scratch: its statistics have to be learnt
    assert not frozen(model=M.REAL_TWO_TOWER, freeze_bn_stats=False) and frozen(model="foil-tiny-vit", freeze_bn_stats=True)
