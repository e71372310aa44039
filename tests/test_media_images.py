"""media/images.py normalises by table look-up: the values must be those of
the arithmetic it replaced (bit for bit) and of a float64 reference."""
import numpy as np
import pytest
from PIL import Image

from metalm_jax.media import images
from metalm_jax.media.images import CLIP_MEAN, CLIP_STD


def _old(image, image_size, mean=CLIP_MEAN, std=CLIP_STD):
  """The implementation before the look-up table (float32 arithmetic)."""
  if image.shape[:2] != (image_size, image_size):
    image = np.asarray(Image.fromarray(image).resize((image_size, image_size),
                                                      Image.Resampling.BICUBIC))
  x = image.astype(np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _every_byte():
  """uint8 [16, 16, 3]: every value 0..255 in every channel, channels shifted."""
  v = np.arange(256, dtype=np.uint8).reshape(16, 16)
  return np.stack([v, np.roll(v, 85), np.roll(v, 170)], axis=-1)


@pytest.mark.parametrize("norm", [(CLIP_MEAN, CLIP_STD), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                                  ([0.1, 0.2, 0.3], np.array([0.9, 0.8, 0.7])), (0.5, 0.25)])
def test_table_equals_arithmetic_bit_for_bit(norm):
  mean, std = norm
  img = _every_byte()
  got = images.preprocess_image(img, 16, mean, std)
  assert got.dtype == np.float32 and got.shape == (16, 16, 3)
  np.testing.assert_array_equal(got, _old(img, 16, mean, std))
  ref = ((img.astype(np.float64) / 255.0 - np.broadcast_to(np.asarray(mean, np.float64), (3,)))
         / np.broadcast_to(np.asarray(std, np.float64), (3,)))
  np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)


def test_resized_and_strided_inputs_match():
  rng = np.random.default_rng(0)
  small = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
  np.testing.assert_array_equal(images.preprocess_image(small, 224), _old(small, 224))
  big = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  view = big[:, :, ::-1]  # a non-contiguous view
  np.testing.assert_array_equal(images.preprocess_image(view, 32),
                                _old(np.ascontiguousarray(view), 32))


def test_output_is_writable_and_table_is_not_shared():
  img = _every_byte()
  a = images.preprocess_image(img, 16)
  a[:] = 0  # callers may write into the result: it is not the cached table
  np.testing.assert_array_equal(images.preprocess_image(img, 16), _old(img, 16))
