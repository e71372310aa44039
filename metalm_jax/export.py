"""Entry point: `python -m metalm_jax.export --workdir=W --out=D` (see
metalm_jax/convert/export.py for what is written)."""
import sys

from metalm_jax.convert.export import main

if __name__ == "__main__":
  sys.exit(main())
