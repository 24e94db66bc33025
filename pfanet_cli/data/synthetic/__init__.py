"""Synthetic RGB/IR pedestrians written in the exact SYSU-MM01 raw layout (SPEC §2), or in the LLCM layout
(``llcm.py``).

Real SYSU-MM01 needs a signed request, so the toolkit ships this renderer. It writes
``cam1..cam6/<pid:04d>/<n:04d>.jpg``, ``exp/{train,val,test,available}_id.txt`` and
``exp/rand_perm_cam.mat`` in the official format, so data preparation, training and evaluation run
on it unchanged. ``plan.py`` decides which images exist, ``person.py`` draws the people, ``scene.py``
the cameras and scenes, ``render.py`` composes and writes the images.

What an image shows
-------------------
* **Identity** (fixed per person, drawn from ``(seed, pid)``): height and body width, head size,
  leg length, garment layout (sleeveless / short / long sleeves, tucked / long top or coat,
  trousers / shorts / skirt), top pattern (solid, horizontal stripes, vertical stripes, checks,
  two-tone block, chest emblem), garment, shoe, bag and hair colours, bag (none, shoulder bag on the
  left or right, backpack), hair (buzz, short, long, ponytail) and an optional cap.
* **Camera nuisance** (per camera, per track of a person in a camera, per image): a scene per
  camera (cam1 lab, cam2 corridor, cam4 tree-lined road, cam5 building front; IR cam3 the corridor
  of cam2, IR cam6 outdoors), light level and colour cast, blur, sensor noise, position / scale /
  aspect jitter, walking pose, view (front, back, left or right side: an emblem only shows from
  the front, a backpack shows fully only from the back, a side view narrows the body and shows the
  stride) and partial occlusion by a pole or a box.
* **Modality gap**: IR cameras 3 and 6 are active near-infrared cameras (about 850 nm). Each material's
  IR intensity is its near-infrared reflectance, a documented function of its visible colour and a material
  class (dye or carbon black; skin, hair), mixed with an independent residual whose share is a render option
  (``nir.py``, docs/synthetic.md); backgrounds far from the illuminator stay dark; the image is stored as a
  JPEG with three equal channels. Shape, layout, pattern geometry, bag and hair carry across modalities;
  hue never does, grey levels partly do.
"""

from pfanet_cli.data.synthetic.llcm import (
    LLCM_PRESETS,
    LlcmPlan,
    LlcmSummary,
    plan_synthetic_llcm,
    render_llcm_plan,
    render_synthetic_llcm,
)
from pfanet_cli.data.synthetic.person import Identity, draw_identity
from pfanet_cli.data.synthetic.plan import PRESETS, SyntheticPlan, plan_synthetic_sysu
from pfanet_cli.data.synthetic.render import (
    MARKER_FILE,
    SyntheticSummary,
    other_render,
    render_person_image,
    render_plan,
    render_synthetic_sysu,
    visible_labels,
)

__all__ = [
    "LLCM_PRESETS",
    "LlcmPlan",
    "LlcmSummary",
    "plan_synthetic_llcm",
    "render_llcm_plan",
    "render_synthetic_llcm",
    "PRESETS",
    "MARKER_FILE",
    "SyntheticPlan",
    "SyntheticSummary",
    "other_render",
    "plan_synthetic_sysu",
    "render_plan",
    "render_synthetic_sysu",
    "render_person_image",
    "visible_labels",
    "draw_identity",
    "Identity",
]
