"""CLI.

  python -m metalm_jax.convert import-hf --model_dir=D \
      --component=vision|text|audio|decoder|video --out=OUT
      [--scan_layers] [--no-add_special_tokens] [--option FIELD=VALUE ...]
  python -m metalm_jax.convert check-hf --model_dir=D --component=... [--seed=0 --rtol=1e-4
      --scan_layers --option FIELD=VALUE ...]
  python -m metalm_jax.convert export-hf --params_dir=P --out=HF_DIR
      [--family=gpt2|llama|qwen2|gemma] [--lora=merge|separate]
  python -m metalm_jax.convert export-gpt2 --params_dir=P --out=HF_DIR   (= export-hf --family=gpt2)

import-hf prints the model config section to copy into the MetaLM config; for
a decoder with a tokenizer.json it adds the project's special tokens the
tokenizer lacks, and their embedding rows, unless --no-add_special_tokens;
check-hf prints the differences and exits 1 above tolerance. `--option` sets a
section field the converter offers (SigLIP: `--option readout=map` docks its
attention-pooled vector instead of every token and imports the pooling head).
"""
from __future__ import annotations

import argparse
import json
import sys


def _field_value(item: str):
  """argparse type of --option: 'FIELD=VALUE' -> (field, value) (a string)."""
  field, sep, value = item.partition("=")
  if not sep or not field:
    raise argparse.ArgumentTypeError(f"{item!r}: expected FIELD=VALUE")
  return field, value


def _options(args):
  return dict(args.option)


def _import(args):
  from metalm_jax import params_io, storage
  from metalm_jax.convert import hf
  imp = hf.import_hf(args.model_dir, args.component, args.out, scan_layers=args.scan_layers,
                     add_special_tokens=args.add_special_tokens, options=_options(args))
  key = hf.hc.COMPONENT_KEYS[args.component]
  where = "model.decoder" if args.component == "decoder" else f"model.encoders.{args.component}"
  print(f"wrote {args.out}; skipped {len(imp.skipped)} HF weights")
  added = storage.read_json(storage.join(args.out, params_io.CONFIG_FILE)).get("added_tokens")
  if added:
    print(f"added to tokenizer.json (rows = mean of the original rows): {added}")
  print(f"load it with: config.init_components = {{'{key}': '{args.out}'}}")
  print(f"config section for {where}:")
  print(json.dumps(imp.section.to_dict(), indent=2, sort_keys=True))
  return 0


def _check(args):
  from metalm_jax.convert import hf
  r = hf.check_hf(args.model_dir, args.component, seed=args.seed, batch=args.batch,
                  rtol=args.rtol, scan_layers=args.scan_layers, options=_options(args))
  print(f"{r['component']} ({r['hf_model_type']}) output {r['shape']}: "
        f"max_abs_diff={r['max_abs']:.3e} max_rel_diff={r['rel']:.3e} "
        f"(max|ref|={r['max_ref']:.3e}, tolerance rel {r['rtol']:.1e}) "
        f"{'OK' if r['ok'] else 'FAIL'}")
  return 0 if r["ok"] else 1


def _export_hf(args):
  import ml_collections
  from metalm_jax import params_io, storage
  from metalm_jax.convert import export, hf_export, lora_export
  params, config = params_io.load_params(args.params_dir)
  section = export.decoder_section_from(config, args.params_dir)
  tree = params["decoder"] if "decoder" in params else params
  section = ml_collections.ConfigDict(section)
  family, out = hf_export.save_hf_decoder(args.out, section, tree, args.family, lora=args.lora)
  print(f"wrote HF {family} dir {out}")
  if args.lora == "separate" and lora_export.lora_section(section) is not None:
    where = lora_export.save_adapters(storage.join(out, lora_export.ADAPTERS_DIR), section,
                                      tree)
    print(f"wrote the LoRA adapters (the HF dir holds the base) to {where}")
  return 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m metalm_jax.convert")
  sub = p.add_subparsers(dest="cmd", required=True)
  for name in ("import-hf", "check-hf"):
    s = sub.add_parser(name)
    s.add_argument("--model_dir", required=True)
    s.add_argument("--component", required=True,
                   choices=["vision", "text", "audio", "decoder", "video"])
    s.add_argument("--scan_layers", action="store_true",
                   help="stacked (scanned) layer params and section scan_layers=True")
    s.add_argument("--option", action="append", default=[], type=_field_value,
                   metavar="FIELD=VALUE",
                   help="a section field the converter offers (SigLIP: readout=tokens|map)")
    if name == "import-hf":
      s.add_argument("--out", required=True)
      s.add_argument("--add_special_tokens", action=argparse.BooleanOptionalAction, default=True,
                     help="decoder: add the project's special tokens its tokenizer.json lacks, "
                          "with embedding rows initialised as the mean of the existing ones")
    else:
      s.add_argument("--seed", type=int, default=0)
      s.add_argument("--batch", type=int, default=2)
      s.add_argument("--rtol", type=float, default=1e-4)
  for name in ("export-hf", "export-gpt2"):
    s = sub.add_parser(name)
    s.add_argument("--params_dir", required=True,
                   help="an export params dir or an import-hf decoder dir")
    s.add_argument("--out", required=True)
    s.add_argument("--lora", choices=("merge", "separate"), default="merge",
                   help="LoRA adapters: merged into the kernels, or the base written and the "
                        "adapters to OUT/lora (convert/lora_export.py)")
    if name == "export-hf":
      s.add_argument("--family", default=None,
                     help="HF family to write (default: the one the decoder's fields fit)")
    else:
      s.set_defaults(family="gpt2")
  args = p.parse_args(argv)
  return {"import-hf": _import, "check-hf": _check, "export-hf": _export_hf,
          "export-gpt2": _export_hf}[args.cmd](args)


if __name__ == "__main__":
  sys.exit(main())
