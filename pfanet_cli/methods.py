"""What a recipe trains, in words: the method (PFANet or AGW, with the switches that make it another model) and
every augmentation in force, as ``run.yaml`` and the protocol card state them, so that two numbers from different
recipes can be told apart. Also which training stages belong to which method."""

from __future__ import annotations

from pfanet_cli.config import Recipe
from pfanet_cli.errors import UsageError

STAGE_METHODS = {"train-gan": "pfanet", "train-joint": "pfanet", "train-agw": "agw"}
"""The method (``model.method``) each training stage trains."""
ERASING = "area 0.02-0.4, aspect 0.3-3.33, fill (0.4914, 0.4822, 0.4465) of the ImageNet-normalised image"


def require_stage_method(recipe: Recipe, stage: str) -> None:
    """A usage error when ``stage`` does not train the recipe's method, saying which command does, or when two of
    train-joint's keys contradict each other."""
    wanted = STAGE_METHODS[stage]
    if recipe.model.method == wanted:
        if stage == "train-joint":
            _require_compatible_joint_keys(recipe)
        return
    if recipe.model.method == "agw":
        raise UsageError(f"recipe '{recipe.name}' is AGW (model.method=agw), which trains in one stage without a GAN: "
                         f"run pfanet train-agw with it, not {stage}")
    raise UsageError(f"recipe '{recipe.name}' is PFANet (model.method=pfanet): train it with pfanet train-gan, then "
                     f"pfanet train-joint; {stage} trains model.method=agw recipes")


def _require_compatible_joint_keys(recipe: Recipe) -> None:
    """The grey ablation has no G to warm up; ``before_pad`` defers only the RGB images' pad, crop and flip, so it
    does not decide where their greyscale, erasing or channel exchange would go."""
    joint = recipe.joint
    if joint.generator_warmup_iterations and recipe.model.pixel_alignment == "grey":
        raise UsageError(f"recipe '{recipe.name}': joint.generator_warmup_iterations="
                         f"{joint.generator_warmup_iterations} trains G, and model.pixel_alignment=grey has none (a "
                         "fixed luma conversion); set it to 0")
    rgb_augmentations = [f"data.{key}" for key in ("grayscale", "erasing", "channel_exchange")
                         if getattr(recipe.data, key)]
    if joint.f_step_translate == "before_pad" and rgb_augmentations:
        raise UsageError(f"recipe '{recipe.name}': joint.f_step_translate=before_pad defers only the RGB images' pad, "
                         f"crop and flip until after G_I, not {', '.join(rgb_augmentations)}; use after_pad with them")


def describe_method(recipe: Recipe) -> str:
    """The method and what makes it this model (backbone, modules, losses), in one line."""
    model = recipe.model
    init = "ImageNet" if model.pretrained == "imagenet" else ("from scratch" if model.pretrained == "none" else
                                                            "weights from a file")
    if model.method == "agw":
        non_local = {"agw": "non-local blocks embedding in 1 channel (AGW's code)",
                     "half": "non-local blocks embedding in C/2 (not AGW's published model)",
                     "off": "no non-local blocks"}[model.non_local]
        pooling = "GeM p = 3" if model.pooling == "gem" else "average pooling"
        triplet = {"wrt": "weighted regularised triplet (AGW)",
                   "adp": "adaptive squared-difference triplet (CAJ's TripletLoss_ADP)"}[recipe.agw.triplet]
        return (f"AGW: two-stream {model.backbone} ({init}; visible and thermal stems, shared layer1-4, last stride "
                f"{model.last_stride}), {non_local}, {pooling}, BN-neck; cross-entropy + {triplet}")
    modules = [name for name, on in (("BNG", model.bng), ("MMM", model.mmm)) if on]
    extractor = f"{model.backbone} ({init})" + (" with " + " and ".join(modules) if modules else ", no BNG, no MMM")
    if model.pixel_alignment == "grey":
        return f"PFANet without the GAN: F {extractor}; RGB images reach F through a fixed luma conversion"
    return f"PFANet: F {extractor}; generators G_I, G_R and the joint discriminator"


def describe_augmentation(recipe: Recipe, stage: str | None = None) -> str:
    """Every augmentation of the batches the ReID network learns from (F's in train-joint, AGW's in train-agw),
    in the order they are applied; train-gan's batches are only flipped."""
    data = recipe.data
    flip = ["horizontal flip"] if data.flip else []
    if stage == "train-gan":
        return "; ".join(flip + ["no padding (the generators' and discriminators' batches)"])
    items = list(flip)
    if data.pad:
        items.append(f"zero padding {data.pad} + random crop")
    if data.grayscale:
        items.append(f"random grayscale p {data.grayscale:g} on the pixels, both modalities (DEEN)")
    if data.erasing:
        items.append(f"random erasing p {data.erasing:g} ({ERASING})")
    if data.rgb_views == 2:
        items.append("two independently augmented views of every RGB image (CAJ)")
    if data.channel_exchange:
        which = "second RGB view" if data.rgb_views == 2 else "RGB images"
        items.append(f"channel exchange p {data.channel_exchange:g} on the {which} (CAJ's ChannelExchange(gray=2))")
    if data.ir_adaptive_gray:
        items.append("ChannelAdapGray(0.5) on the IR images (CAJ)")
    return "; ".join(items) if items else "none"
