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

arg `modality` (image | audio | video | audio_image; tiny only for the
others): questions about the world's sound clips (`world_audio_qa`), videos
(`world_video_qa`, "which object moved?"), or a picture with a sound
(`world_audio_image_qa`: answers need both), on the four-modality model of
configs/pretrain_av.py (init from its run).

    python -m metalm_jax.main --config=configs/finetune_vqa.py:size=tiny,modality=video,init=/tmp/av \
        --workdir=/tmp/video_qa
"""
from configs import common
from configs import finetune_common as F

MODALITIES = {"image": "world_vqa", "audio": "world_audio_qa", "video": "world_video_qa",
              "audio_image": "world_audio_image_qa"}  # modality -> world source

SIZES = {  # every: eval and checkpoint interval; examples: evaluated examples
    "tiny": dict(model="tiny", data="tiny", source="world_vqa", batch=16, steps=300, lr=5e-4,
                 warmup=20, every=100, examples=128),
    "paper": dict(model="paper_vl", data="paper_vl", source="vqav2", batch=256, steps=40_000,
                  lr=1e-5, warmup=0, every=5000, examples=5000),
}


def get_config(arg=None):
  a, s = F.parse(arg, SIZES, modality="image")
  source = F.modality_choice(a, MODALITIES, s.source)
  c = F.base(a, model=s.model, kind="vl", data=s.data, mixture={source: 1.0}, batch=s.batch,
             steps=s.steps, lr=s.lr, warmup=s.warmup, eval_every=s.every, ckpt=s.every)
  if a.modality != "image":
    common.add_av_encoders(c.model)
  c.evals = {"vqa": F.evaluator("vqa", source, s.every, num_examples=s.examples,
                                max_new_tokens=8)}
  return c
