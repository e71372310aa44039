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

    python -m metalm_jax.main \
        --config=configs/finetune_vqa.py:size=tiny,modality=video,init=/tmp/av \
        --workdir=/tmp/video_qa

arg `dataset=NAME`: your own data set (docs/your-data.md), built into the data
dir with `python -m metalm_jax.data.build --data_dir=D --world= --jsonl=NAME:FOLDER`:
trains on source NAME_vqa (NAME_audio_qa, NAME_video_qa with modality=audio /
video) and evaluates VQA accuracy on NAME's validation split, at any size.

    python -m metalm_jax.main --config=configs/finetune_vqa.py:size=tiny,dataset=pets,init=/tmp/vl \
        --workdir=/tmp/pets_vqa --config.data.data_dir=D
"""
from configs import common
from configs import finetune_common as F

MODALITIES = {"image": "world_vqa", "audio": "world_audio_qa", "video": "world_video_qa",
              "audio_image": "world_audio_image_qa"}  # modality -> world source
DATASET_KINDS = {"image": "vqa", "audio": "audio_qa", "video": "video_qa"}  # -> source suffix

KNOBS = ("source", "examples")  # the trained and evaluated source; evaluated examples
SIZES = {
    "tiny": {"model": "tiny", "data": "tiny", "source": "world_vqa", "examples": 128,
             "batch_size": 16, "total_steps": 300, "optimizer.lr": 5e-4,
             "optimizer.warmup_steps": 20, "eval_loss.every_steps": 100,
             "checkpoint.every_steps": 100},
    "paper": {"model": "paper_vl", "data": "paper_vl", "source": "vqav2", "examples": 5000,
              "batch_size": 256, "total_steps": 40_000, "optimizer.lr": 1e-5,
              "optimizer.warmup_steps": 0, "eval_loss.every_steps": 5000,
              "checkpoint.every_steps": 5000},
}


def get_config(arg=None):
  a, s, fields = F.parse(arg, SIZES, KNOBS, modality="image", dataset="")
  source = (F.dataset_source(a, DATASET_KINDS) if a.dataset
            else F.modality_choice(a, MODALITIES, s.source))
  c = F.base(a, s, fields, kind="vl", mixture={source: 1.0})
  if a.modality != "image":
    common.add_av_encoders(c.model)
  c.evals = {"vqa": F.evaluator("vqa", source, c.eval_loss.every_steps, num_examples=s.examples,
                                max_new_tokens=8)}
  return c
