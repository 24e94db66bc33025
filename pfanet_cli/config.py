"""The recipe: its typed schema (dataclasses whose fields carry their checks and help), and the one
loader: YAML (``safe_load``), optional ``base:`` inheritance, dotted ``key=value`` overrides with
YAML-typed values, validation that names the closest valid key.

Every interpretation the paper leaves open is a key here; ``docs/model.md`` explains the defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import reprlib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from pfanet_cli.errors import UsageError

MAX_RECIPE_BYTES = 1 << 20
"""A recipe file (or one override) larger than this is refused before it is parsed."""
MAX_STRING = 4096
"""The longest string a recipe value may be (paths, names)."""
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _at_least(minimum: int):
    def check(value: Any) -> str | None:
        return None if value >= minimum else f"must be >= {minimum}"

    return check


def _divisible_by_16(value: Any) -> str | None:
    if value <= 0 or value % 16:
        return "must be a positive multiple of 16 (all networks downsample by 16)"
    return None


def _unit_interval(value: Any) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _probability(value: Any) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def _key(default: Any, check=None, help: str = "") -> Any:
    return field(default=default, metadata={"check": check, "help": help})


@dataclass
class DataConfig:
    dataset: Literal["sysu", "regdb", "llcm"] = _key("sysu", help="dataset of the prepared directory")
    root: str = _key("data/prepared/sysu", help="prepared data directory (prepare-data output)")
    height: int = _key(288, _divisible_by_16, "network input height")
    width: int = _key(144, _divisible_by_16, "network input width")
    pad: int = _key(10, _non_negative, "zero padding before the random crop (F's augmentation)")
    flip: bool = _key(True, help="random horizontal flip")
    erasing: float = _key(0.0, _probability, "random erasing probability per image (Zhong et al.; area 0.02-0.4, "
                                             "aspect 0.3-3.33, the reference's fill); 0 = off, CAJ: 0.5")
    grayscale: float = _key(0.0, _probability, "random grayscale probability per image, both modalities, on the "
                                               "pixels (DEEN's RandomGrayscale: 0.5); 0 = off")
    channel_exchange: float = _key(0.0, _probability, "probability that an RGB view becomes one of its channels, R, "
                                                      "G or B at random (CAJ's ChannelExchange(gray=2)); 0 = off")
    ir_adaptive_gray: bool = _key(False, help="CAJ's ChannelAdapGray(0.5) on the IR images: one channel copied to "
                                              "all three (3/4), ITU greyscale (1/8) or unchanged (1/8)")
    rgb_views: Literal[1, 2] = _key(1, help="2: every RGB image twice, augmented independently, the second view "
                                            "with data.channel_exchange (CAJ's joint batch; train-agw only)")


@dataclass
class ModelConfig:
    backbone: Literal["resnet18", "resnet34", "resnet50"] = _key("resnet50", help="torchvision ResNet of F")
    pretrained: str = _key("imagenet", help="imagenet (local file or torch hub cache), none, or a path")
    last_stride: Literal[1, 2] = _key(1, help="stride of layer4 (1 gives an 18x9 map at 288x144)")
    bng: bool = _key(True, help="BNG attention: NAM gate + GAM, placed as model.bng_placement says")
    bng_form: Literal["residual", "plain"] = _key("residual", help="GAM applied as x*(1+M) or x*M")
    nam_gated: Literal["bn_output", "bn_input"] = _key(
        "bn_output", help="what the NAM gate sigmoid(w*BN(x)) multiplies: BN(x), keeping the block's pretrained BN, "
                          "or x itself (NAM's module, SPEC's formula)")
    gam_ratio: int = _key(4, _at_least(1), "GAM channel reduction ratio")
    gam_groups: int = _key(4, _at_least(1), "groups of GAM's spatial 7x7 convs (with channel shuffle)")
    mmm: bool = _key(True, help="modal mitigation module after layer3 and layer4")
    mmm_ratio: int = _key(16, _at_least(1), "MMM mask MLP reduction ratio")
    embed_dim: int = _key(256, _at_least(1), "embedder output size (triplet loss)")
    classifier_hidden: int = _key(256, _at_least(1), "classifier bottleneck size")
    dropout: float = _key(0.5, _unit_interval, "classifier dropout")
    input_norm: Literal["imagenet", "none"] = _key(
        "imagenet", help="F's input: 'imagenet' maps the [-1, 1] images to ImageNet mean/std inside F (what its "
                         "ImageNet weights, AGW and AlignGAN's encoder expect); 'none' feeds [-1, 1] as it is")
    generator_channels: int = _key(64, _at_least(1), "G's first conv width (AlignGAN: 64)")
    generator_res_blocks: int = _key(4, _at_least(0), "G's residual blocks (AlignGAN: 4)")
    generator_skip: bool = _key(False, help="G adds a 1x1 conv of its input before the tanh: a full-resolution "
                                            "path (not in AlignGAN; for small, short GAN runs)")
    disc_channels: int = _key(64, _at_least(1), "D's first conv width (64)")
    joint_feature_channels: int = _key(64, _at_least(1), "joint D: width of the projected feature map")
    pixel_alignment: Literal["gan", "grey"] = _key(
        "gan", help="how RGB images reach F: 'gan' through G_I (PFANet; trained by train-gan and the joint phase), "
                    "'grey' through a fixed luma conversion (no generator, no GAN: the ablation's 'without the GAN')")
    method: Literal["pfanet", "agw"] = _key(
        "pfanet", help="pfanet (train-gan, then train-joint) or agw (AGW's two-stream network, trained by train-agw)")
    non_local: Literal["agw", "half", "off"] = _key(
        "agw", help="AGW's non-local blocks (model.method=agw): 'agw' embeds in 1 channel as AGW's code does (the "
                    "published model), 'half' in C/2 (Wang et al.'s design, a different model), 'off' none")
    pooling: Literal["gem", "avg"] = _key("gem", help="AGW's pooling (model.method=agw): GeM with p = 3, or average")
    generator_test_norm: Literal["running", "instance"] = _key(
        "running", help="G's InstanceNorm in eval mode (extract, translate, validation): its running statistics "
                        "(AlignGAN, SPEC) or each image's own statistics, as in training")
    bng_placement: Literal["blocks", "stages"] = _key(
        "blocks", help="BNG's channel gate: in every residual block on its last BN, GAM after each stage; or one "
                       "new BN -> NAM gate -> GAM module at each stage output (eqs. 9-10 as one block)")


@dataclass
class GanConfig:
    iterations: int = _key(10000, _non_negative, "train-gan iterations")
    ids_per_batch: int = _key(4, _at_least(1), "P of the train-gan batch")
    images_per_id: int = _key(4, _at_least(1), "K of the train-gan batch (per modality)")
    lr: float = _key(2e-4, _positive, "Adam learning rate of G and D")
    beta1: float = _key(0.5, _unit_interval, "Adam beta1")
    beta2: float = _key(0.999, _unit_interval, "Adam beta2")
    cycle_weight: float = _key(10.0, _non_negative, "weight of the cycle L1 loss")
    identity_weight: float = _key(0.0, _non_negative, "weight of the identity L1 loss (AlignGAN: 5)")
    pool_size: int = _key(50, _non_negative, "image pool of fakes for D (0 = off)")


@dataclass
class GanBatchConfig:
    ids_per_batch: int = _key(4, _at_least(2), "P of the G and D steps' own batch (AlignGAN: 4)")
    images_per_id: int = _key(4, _at_least(1), "K of the G and D steps' own batch, per modality (AlignGAN: 4)")
    pad: int = _key(0, _non_negative, "zero padding before the random crop of that batch (AlignGAN: none)")


@dataclass
class LossWeights:
    gen_adv: float = _key(1.0, _non_negative, "lambda1: the whole L_G of eq. 16 (adversarial terms + omega x cycle)")
    disc: float = _key(1.0, _non_negative, "lambda2: L_D_I")
    cls_gan: float = _key(0.1, _non_negative, "lambda3: CE of F(G_I(x_rgb)) in the G step")
    tri_gan: float = _key(0.1, _non_negative, "lambda4: triplet of fake/real IR in the G step")
    cls_feat: float = _key(1.0, _non_negative, "lambda5: CE on real and fake IR in the F step")
    tri_feat: float = _key(1.0, _non_negative, "lambda6: cross-modality triplet in the F step")
    feat_adv: float = _key(0.1, _non_negative, "F step: LSGAN of D_I(x_ir, f(x'_ir)) towards real")
    cycle: float = _key(10.0, _non_negative, "omega: cycle L1 weight inside L_G (eq. 7) in the joint G step")


@dataclass
class JointConfig:
    warmup_iterations: int = _key(5000, _non_negative, "phase 1: F alone (on joint.warmup_images)")
    iterations: int = _key(10100, _non_negative, "phase 2: joint F, G, D iterations")
    lr_decay_at: int = _key(5000, _non_negative, "joint iteration after which all learning rates decay")
    lr_decay_factor: float = _key(0.1, _positive, "learning-rate decay factor")
    ids_per_batch: int = _key(9, _at_least(2), "P: identities per batch")
    images_per_id: int = _key(4, _at_least(1), "K: images per identity and modality")
    lr_backbone: float = _key(0.02, _positive, "SGD lr of the backbone and attention modules")
    lr_head: float = _key(0.2, _positive, "SGD lr of the classifier and embedder")
    lr_gan: float = _key(2e-4, _positive, "Adam lr of G and D")
    momentum: float = _key(0.9, _unit_interval, "SGD momentum")
    nesterov: bool = _key(True, help="Nesterov momentum")
    weight_decay: float = _key(5e-4, _non_negative, "SGD weight decay")
    triplet_distance: Literal["cosine", "euclidean"] = _key("cosine", help="triplet distance")
    triplet_margin: float | None = _key(None, help="triplet margin (default 1.0 cosine, 0.3 euclidean)")
    triplet_feature: Literal["embedding", "pooled"] = _key(
        "embedding", help="what the triplet sees: the embedder output, or v (GAP, the test feature)")
    fake_anchor_negatives: Literal["real", "fake"] = _key(
        "real", help="where the triplet term anchored on fake IR mines its negatives: among the real IR (AlignGAN) or "
                     "among the fake IR (eqs. 14/15 read literally, L_tri(X'ir, X_ir, X'ir))")
    mismatch_pair: bool = _key(False, help="AlignGAN's mismatched-identity pair as an extra fake for D_I")
    validate_every: int = _key(0, _non_negative, "iterations between validations on the prepared 'val' split "
                                                 "(keeps best.pt by val mAP; 0 = off)")
    validate_trials: int = _key(10, _at_least(1), "gallery trials of each validation")
    gan_batch: GanBatchConfig = field(default_factory=GanBatchConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    warmup_images: Literal["ir_and_fake", "ir_only"] = _key(
        "ir_and_fake", help="F's warm-up: real IR and fake IR (G_I of the RGB images), or real IR only "
                            "(AlignGAN's feature warm-up, which needs no G)")
    generator_warmup_iterations: int = _key(
        0, _non_negative, "phase between the F warm-up and the joint phase: G trained against plain PatchGANs "
                          "with lambda3 CE + lambda4 triplet through the warmed F (AlignGAN's pixel warm-up; 0 = off)")
    f_step_bn: Literal["joint", "per_modality"] = _key(
        "joint", help="F step: fake and real IR in one forward (shared BN statistics) or one forward each "
                      "(AlignGAN)")
    gen_adv_feature: Literal["fake", "real_detached"] = _key(
        "fake", help="feature map D_I sees with G's fake IR in the G step: f(x'_ir) with gradient through F "
                     "(eq. 1) or f(x_ir) detached (AlignGAN)")
    loss_scaling: Literal["pfanet", "aligngan"] = _key(
        "pfanet", help="pfanet: eqs. 6/7/14/15 (pairs summed, G's triplet halved, F's CE one mean over the "
                       "union); aligngan: pairs averaged, G's triplet terms summed, F's CE a sum of two means")
    f_step_translate: Literal["after_pad", "before_pad"] = _key(
        "after_pad", help="F's fake IR: G_I of the padded, cropped RGB, or G_I of the RGB image, then the same "
                          "pad, crop and flip")

    def resolved_margin(self) -> float:
        if self.triplet_margin is not None:
            return self.triplet_margin
        return 1.0 if self.triplet_distance == "cosine" else 0.3


@dataclass
class TrainConfig:
    seed: int = _key(0, _non_negative, "random seed")
    device: Literal["auto", "cpu", "cuda"] = _key("auto", help="auto picks CUDA when available")
    amp: Literal["auto", "off", "bf16", "fp16"] = _key(
        "auto", help="autocast precision; auto: fp32 on CUDA (with train.tf32), bf16 on CPUs with native bf16 "
                     "(AVX512-BF16 or AMX), fp32 on other CPUs; fp16 (with gradient scaling) on CUDA only")
    tf32: bool = _key(True, help="allow TF32 matrix products and convolutions on CUDA (fp32 storage)")
    compile: bool = _key(False, help="torch.compile F, G and D (compiled at their first call)")
    prefetch: int = _key(2, _non_negative, "batches prepared ahead on a background thread (0: on the training "
                                           "thread)")
    channels_last: bool = _key(True, help="channels-last memory format (faster convolutions on CPU and CUDA)")
    deterministic: bool = _key(False, help="deterministic algorithms (exact resume on CPU)")
    sync_bn: bool = _key(False, help="SyncBatchNorm under DDP")
    log_every: int = _key(20, _at_least(1), "iterations between log lines / metrics.jsonl rows")
    sample_every: int = _key(500, _at_least(1), "iterations between sample grids")
    checkpoint_every: int = _key(1000, _at_least(1), "iterations between kept checkpoints")
    runs_root: str = _key("runs", help="parent of run directories when --out is not given")


@dataclass
class AgwConfig:
    """train-agw: AGW's schedule and losses (``mangye16/Cross-Modal-Re-ID-baseline``, ``train.py``)."""

    epochs: int = _key(81, _at_least(1), "epochs (AGW's train.py loops over epochs 0..80)")
    iterations_per_epoch: int = _key(0, _non_negative, "0: AGW's rule, int(max(#RGB, #IR) / (P*K)) + 1 of the "
                                                       "training split; else this many")
    ids_per_batch: int = _key(8, _at_least(2), "P: identities per batch (AGW: 8)")
    images_per_id: int = _key(4, _at_least(1), "K: images per identity and modality (AGW: 4)")
    lr: float = _key(0.1, _positive, "SGD lr of the BN-neck and classifier (AGW: 0.1)")
    backbone_lr_factor: float = _key(0.1, _positive, "the rest of the network learns at lr x this (AGW: 0.1)")
    warmup_epochs: int = _key(10, _non_negative, "linear warm-up: epoch e < this runs at lr * (e + 1) / this")
    first_decay: int = _key(20, _non_negative, "from this epoch on, lr x 0.1 (AGW: 20)")
    second_decay: int = _key(50, _non_negative, "from this epoch on, lr x 0.01 (AGW: 50)")
    momentum: float = _key(0.9, _unit_interval, "SGD momentum (Nesterov)")
    weight_decay: float = _key(5e-4, _non_negative, "SGD weight decay")
    triplet: Literal["wrt", "adp"] = _key(
        "wrt", help="wrt: AGW's weighted regularised triplet; adp: CAJ's TripletLoss_ADP (squared difference)")
    adp_alpha: float = _key(1.0, _positive, "adp: scale of the distances inside the softmax weights (CAJ: 1)")
    adp_gamma: float = _key(1.0, _positive, "adp: scale of the squared difference (CAJ: 1)")
    test_feature: Literal["fc", "pool"] = _key(
        "fc", help="what extract writes: fc, the BN-neck output (the feature AGW's train.py chooses its best model "
                   "by), or pool, the pooled map; both L2-normalised")
    test_flip: bool = _key(False, help="mean of the image's and its flip's normalised features, normalised (CAJ's "
                                       "testa.py); AGW's test.py does not flip")
    validate_every: int = _key(0, _non_negative, "iterations between validations on the prepared 'val' split "
                                                 "(keeps best.pt by val mAP; 0 = off)")
    validate_trials: int = _key(10, _at_least(1), "gallery trials of each validation")


@dataclass
class Recipe:
    name: str = _key("pfanet", help="run name (prefix of the run directory)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    joint: JointConfig = field(default_factory=JointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    agw: AgwConfig = field(default_factory=AgwConfig)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain nested dict of the fully resolved recipe (what ``config.yaml`` holds)."""
    return dataclasses.asdict(recipe)


def valid_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """All dotted leaf keys of the schema, e.g. ``model.bng``."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(valid_keys(hints[f.name], name + "."))
        else:
            keys.append(name)
    return keys


def _shown(value: Any) -> str:
    """``repr(value)`` cut to a readable length, however big or deep the value is."""
    return _REPR.repr(value)


def _unknown_key_error(key: str, source: str) -> UsageError:
    key = _REPR.repr(key)[1:-1] if len(key) > _REPR.maxstring else key
    candidates = valid_keys()
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in candidates if k.rsplit(".", 1)[-1] == leaf][:1]
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return UsageError(f"unknown recipe key '{key}' in {source}{hint}")


def _coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    """Check ``value`` against the field's type; numbers written as strings (PyYAML reads ``2e-4``
    as a string) are accepted for float fields, and ``false`` for a choice that has ``off`` (PyYAML
    reads an unquoted ``off``, as in ``train.amp=off``, as false)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        if value is False and "off" in args:
            return "off"
        if not any(type(value) is type(arg) and value == arg for arg in args):
            choices = ", ".join(str(a) for a in args)
            raise UsageError(f"recipe key '{key}' in {source}: {_shown(value)} is not one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(key, value, inner, source)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str) and len(value) <= MAX_STRING:
            return value
        if isinstance(value, str):
            raise UsageError(f"recipe key '{key}' in {source}: a string of {len(value):,} characters; "
                             f"values are at most {MAX_STRING:,}")
    type_name = getattr(annotation, "__name__", str(annotation))
    raise UsageError(f"recipe key '{key}' in {source}: expected {type_name}, got {_shown(value)}")


def _build(cls: type, values: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = prefix + str(name)
        if name not in names:
            raise _unknown_key_error(key, source)
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise UsageError(f"recipe key '{key}' in {source} must be a mapping of keys")
            kwargs[name] = _build(annotation, value, key + ".", source)
            continue
        if isinstance(value, dict):
            raise UsageError(f"recipe key '{key}' in {source} is a value, not a section")
        value = _coerce(key, value, annotation, source)
        check = names[name].metadata.get("check")
        problem = check(value) if (check and value is not None) else None
        if problem:
            raise UsageError(f"recipe key '{key}' in {source}: {_shown(value)} {problem}")
        kwargs[name] = value
    return cls(**kwargs)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def bundled_recipes() -> dict[str, Path]:
    """The recipes shipped with the package (the repository's ``recipes/`` folder), by file name."""
    folder = resources.files("pfanet_cli.bundled_recipes")
    return {item.name: Path(str(item)) for item in folder.iterdir() if item.name.endswith(".yaml")}


def resolve_recipe_path(path: str | Path) -> Path:
    """``path`` itself when it exists, else the bundled recipe of that file name (so
    ``recipes/sysu_pfanet.yaml`` and ``sysu_pfanet.yaml`` work from any folder)."""
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    bundled = bundled_recipes()
    name = path.name if path.suffix else f"{path.name}.yaml"
    return bundled.get(name, path)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe file and the chain of files it names with ``base:`` (relative to itself)."""
    path = path.resolve()
    if path in seen:
        raise UsageError(f"recipe {path} includes itself through 'base:'")
    if not path.is_file():
        names = ", ".join(sorted(bundled_recipes()))
        raise UsageError(f"recipe file not found: {path} (give a YAML file or a bundled recipe: {names})")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise UsageError(f"recipe {path} is {size:,} bytes; a recipe is a small YAML file (at most "
                         f"{MAX_RECIPE_BYTES:,} bytes)")
    try:
        content = _parse_yaml(path.read_text(encoding="utf-8", errors="replace"))
    except UsageError as exc:
        raise UsageError(f"recipe {path}{exc}") from None
    if content is None:
        content = {}
    if not isinstance(content, dict):
        raise UsageError(f"recipe {path} must be a mapping of keys at the top level")
    base = content.pop("base", None)
    if base is None:
        return content
    parent = _read_yaml(path.parent / str(base), seen + (path,))
    return _deep_merge(parent, content)


def _parse_yaml(text: str) -> Any:
    """``yaml.safe_load``; a problem is a :class:`UsageError` whose text goes after the source's name."""
    if len(text) > MAX_RECIPE_BYTES:
        raise UsageError(f": {len(text):,} characters of YAML, more than a recipe may hold ({MAX_RECIPE_BYTES:,})")
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        tag = getattr(exc, "problem", "") or ""
        if "python/" in tag:
            name = tag.split("tag:yaml.org,2002:", 1)[-1].rstrip("'")
            raise UsageError(f"{_yaml_line(exc)} uses the Python tag !!{name}; recipes are plain YAML and Python "
                             "tags are never constructed") from None
        raise UsageError(f"{_yaml_line(exc)} is not plain YAML: {tag}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{_yaml_line(exc)} is not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise UsageError(" nests too deeply to be a recipe") from None


def _yaml_line(exc: yaml.YAMLError) -> str:
    line = getattr(getattr(exc, "problem_mark", None), "line", None)
    return f" line {line + 1}" if line is not None else ""


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["model.bng=false", "joint.lr_head=0.1"]`` -> nested dict with YAML-typed values."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override {_shown(item)} must look like key=value, e.g. joint.iterations=100")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UsageError(f"override {_shown(item)} has an empty key")
        try:
            value = _parse_yaml(raw) if raw.strip() else ""
        except UsageError as exc:
            raise UsageError(f"override {_shown(item)}{exc}") from None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            existing = node.setdefault(part, {})
            if not isinstance(existing, dict):
                raise UsageError(f"override {_shown(item)} conflicts with another override of '{part}'")
            node = existing
        node[parts[-1]] = value
    return nested


def build_recipe(values: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a nested dict against the schema (missing keys take their defaults)."""
    recipe = _build(Recipe, values, "", source)
    if recipe.data.rgb_views == 2 and recipe.model.method != "agw":
        raise UsageError(f"recipe {source}: data.rgb_views=2 (CAJ's two RGB views) needs model.method=agw; PFANet's "
                         "F step pairs each RGB image with one IR image")
    return recipe


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe file (or the defaults when ``path`` is None) and apply dotted overrides."""
    values = _read_yaml(resolve_recipe_path(path)) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    build_recipe(values, source)
    if overrides:
        values = _deep_merge(values, parse_overrides(overrides))
        source = f"{source} + overrides"
    return build_recipe(values, source)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
