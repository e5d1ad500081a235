"""The `train` section of a recipe, validated without importing torch, open_clip or Ray.

Recipe validation runs before every command (`foil curate` included), so it must cost what
reading a YAML file costs: the model name is checked against the architectures' JSON configs
(pipeline/models/architectures.py) and the loss against `LOSS_NAMES`, the keys of
`training.losses.LOSSES` (a test keeps the two equal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.core.stage import ConfigError
from pipeline.models.architectures import REAL_TWO_TOWER, architecture_config

if TYPE_CHECKING:
    from training.loop import LoopConfig

LOSS_NAMES = ("clip", "siglip")
BATCHING = ("random", "families")  # training/batching.py


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe, validated once at the edge (`from_dict`)."""

    model: str = "foil-tiny-vit"
    loss: str = "clip"  # clip | siglip (needs a model with logit_bias, e.g. foil-tiny-vit-sigmoid)
    steps: int = 50
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 5
    grad_accum: int = 1
    use_negatives: bool = True
    use_negative_images: bool = True  # when the data has negative images (fit() checks), TripletCLIP's pairs
    batching: str = "random"  # random | families: a minimal pair's rows in one batch (training/batching.py)
    checkpoint_every: int = 25
    log_every: int = 5
    seed: int = 0
    pretrained: str | None = None
    # Keep batch-norm statistics fixed while training (training/loop.py); null: on when the image
    # tower starts from real weights (`pretrained` given, or foil-effnet-lite0-minilm's ImageNet tower).
    freeze_bn_stats: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "train") -> "TrainConfig":
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        for key in values:
            if key not in known:
                raise ConfigError(f"{where}.{key}: unknown field; known: {', '.join(sorted(known))}")
        cfg = cls(**values)
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{where}.{name}: must be a positive integer, got {value!r}")
        for name in ("lr", "weight_decay"):
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{where}.{name}: must be a non-negative number, got {value!r}")
        for name in ("use_negatives", "use_negative_images"):
            if not isinstance(getattr(cfg, name), bool):
                raise ConfigError(f"{where}.{name}: must be true or false, got {getattr(cfg, name)!r}")
        if cfg.freeze_bn_stats is not None and not isinstance(cfg.freeze_bn_stats, bool):
            raise ConfigError(f"{where}.freeze_bn_stats: must be true, false or null, got {cfg.freeze_bn_stats!r}")
        try:
            model_cfg = architecture_config(cfg.model)
        except KeyError as exc:
            raise ConfigError(f"{where}.model: {exc.args[0]}") from None
        if cfg.batching not in BATCHING:
            raise ConfigError(f"{where}.batching: {cfg.batching!r} is not one of {', '.join(BATCHING)}")
        if cfg.loss not in LOSS_NAMES:
            raise ConfigError(f"{where}.loss: {cfg.loss!r} is not one of {', '.join(LOSS_NAMES)}")
        if cfg.loss == "siglip" and model_cfg.get("init_logit_bias") is None:
            raise ConfigError(f"{where}.loss: siglip needs a model with init_logit_bias; {cfg.model} has none (e.g. foil-tiny-vit-sigmoid)")
        return cfg

    def loop_config(self, bf16: bool) -> "LoopConfig":
        from training.loop import LoopConfig  # torch: only where training runs

        return LoopConfig(
            steps=self.steps, lr=self.lr, weight_decay=self.weight_decay, warmup_steps=self.warmup_steps,
            grad_accum=self.grad_accum, use_negatives=self.use_negatives,
            use_negative_images=self.use_negative_images, bf16=bf16, log_every=self.log_every,
            checkpoint_every=self.checkpoint_every, freeze_bn_stats=self.starts_from_real_weights if self.freeze_bn_stats is None else self.freeze_bn_stats,
        )

    @property
    def starts_from_real_weights(self) -> bool:
        return self.pretrained is not None or self.model == REAL_TWO_TOWER
