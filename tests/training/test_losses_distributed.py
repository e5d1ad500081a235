"""The paired (TripletCLIP) loss gathered across two real worker processes (torch.distributed,
gloo) equals the loss of the whole batch in one process, masks included."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import free_port

# Each worker computes both losses on its half of one fixed batch, gathering the other half.
LOSSES = """
import json, sys
import torch, torch.nn.functional as F
from training.losses import ContrastiveLoss, SigLipLoss

rank, world, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
g = torch.Generator().manual_seed(3)
img, txt, neg_txt, neg_img = (F.normalize(torch.randn(6, 8, generator=g), dim=-1) for _ in range(4))
has_text = torch.tensor([True, False, True, True, True, False])
has_image = torch.tensor([True, True, False, True, False, False])
if world > 1:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
per = 6 // world
rows = slice(rank * per, rank * per + per)
out = {}
for name, loss in (("clip", ContrastiveLoss(rank, world)), ("siglip", SigLipLoss(rank, world))):
    extra = {"logit_bias": torch.tensor(-2.0)} if name == "siglip" else {}
    result = loss(img[rows], txt[rows], torch.tensor(8.0), negative_text_features=neg_txt[rows], has_negative=has_text[rows],
                  negative_image_features=neg_img[rows], has_negative_image=has_image[rows], **extra)
    out[name] = float(result["loss"])
print(json.dumps(out), flush=True)
if world > 1:
    dist.destroy_process_group()  # a gloo group left to interpreter exit can abort ("terminate called without an active exception")
"""


def _run(world: int, port: int) -> list[dict[str, float]]:
    procs = [subprocess.Popen([sys.executable, "-c", LOSSES, str(rank), str(world), str(port)], stdout=subprocess.PIPE, text=True)
             for rank in range(world)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def test_two_workers_gathering_halves_give_the_whole_batch_loss():
    (whole,) = _run(1, 0)
    ranks = _run(2, free_port())
    for rank, got in enumerate(ranks):
        for name in ("clip", "siglip"):
            assert abs(got[name] - whole[name]) < 1e-5, (rank, name, got[name], whole[name])
