"""Config of tests/test_evaluate_multiprocess.py: an eval-only run (init_from
on the command line) of a one-layer vision-language model on the `test`
world, mesh data=2 x fsdp=2 x tensor=2, the five evaluator types on a few
examples each (counts not multiples of the batch shards or processes)."""
from configs import pretrain_vl


def get_config(arg=None):
  del arg
  c = pretrain_vl.get_config("size=tiny")
  c.data.world = "test"
  c.data.seq_len = 32
  c.batch_size = 8
  c.total_steps = 0
  c.eval_loss.every_steps, c.eval_loss.num_batches = 0, 1
  c.data_shards = 2
  c.mesh.update(data=2, fsdp=2, tensor=2)
  c.sharding.min_fsdp_size = 1024
  c.metrics.peak_flops = 1e11
  small = dict(num_layers=1, emb_dim=32, mlp_dim=64, num_heads=2)
  c.model.decoder.update(small)
  c.model.encoders.vision.update(dict(small, image_size=32, max_items=2))  # icl k=1: 2 images
  c.model.encoders.text.update(small)
  # One prompt width (bucket), one max_new_tokens and max_items: every
  # evaluator that generates shares one compiled decoding loop.
  gen = dict(every_steps=1, bucket=128, max_new_tokens=4, batch_size=4,
             num_baseline_examples=8)
  evals = dict(
      vqa=dict(gen, type="vqa", source="world_vqa", num_examples=5),
      caption=dict(gen, type="caption", source="world_caption", num_examples=5, meteor=False),
      classify=dict(gen, type="classify", source="world_nli", num_examples=5),
      icl=dict(gen, type="icl", source="world_vqa", num_examples=3, shots=(0, 1), demo_pool=4),
      loss=dict(type="loss", every_steps=1, split="validation", batch_size=6, num_batches=2),
  )
  for name, ev in evals.items():
    c.evals[name] = ev
  return c
