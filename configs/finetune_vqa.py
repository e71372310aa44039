"""VQA finetuning: "question: Q answer: A" after the image; the answer (the
majority of the human answers) is the only trained text.

    python -m metalm_jax.main --config=configs/finetune_vqa.py:size=tiny,init=/tmp/vl \
        --workdir=/tmp/vqa
    python -m metalm_jax.main --config=configs/finetune_vqa.py:size=paper,init=gs://.../vl \
        --workdir=gs://.../vqa --config.data.manual_dirs.metalm_vqav2=/data/vqav2

tiny: the embedded world's VQA (never seen in pretraining), evaluated with the
VQA accuracy and the majority-answer baseline. paper: VQAv2 (source `vqav2`),
lr 1e-5 fixed, greedy decoding. The paper finetunes at 384 px; the ViT
position table would then need resizing from the 224 px checkpoint, which
init_from does not do, so this config keeps 224 px.
"""
from configs import finetune_common as F

SIZES = {
    # model, data, source, batch, steps, lr, warm-up, eval every, eval examples
    "tiny": ("tiny", "tiny", "world_vqa", 16, 300, 5e-4, 20, 100, 128),
    "paper": ("paper_vl", "paper_vl", "vqav2", 256, 40_000, 1e-5, 0, 5000, 5000),
}


def get_config(arg=None):
  a = F.parse(arg, SIZES)
  model, data, source, batch, steps, lr, warm, every, n = SIZES[a.size]
  c = F.base(a, model=model, kind="vl", data=data, mixture={source: 1.0}, batch=batch,
             steps=steps, lr=lr, warmup=warm, eval_every=every, ckpt=every)
  c.evals = {"vqa": F.evaluator("vqa", source, every, num_examples=n, max_new_tokens=8)}
  return c
