"""A tiny cases file for tests that run the harness's plan (bisection, the one-set-of-gates checks): every task,
a batch-1 base grid and an odd batch off it, short and long prompts, repeat and warm calls, at sizes a tiny model
runs in milliseconds."""

TINY_CASES = """\
schema: vtp-cases/1
version: 1
prompt_sets:
  default: ["a diagram", "a dog", "a cat", "a person"]
  long:
    - "a detailed photograph of a small brown dog with long ears sitting on a wooden bench in a sunny park next
      to a red bicycle while people walk past in the background and birds fly over the old trees near the river"
    - "a potted mistletoe on a honeycomb emporium in missoula, verstappen archaeologists terracotta mogadishu"
profiles:
  quick:
    images: ["1x32x32", "3x32x48"]
    text: [default, long]
    zero_shot_prompts: default
    timing: ["1x32x32"]
    warmup: 1
    iters: 2
    repeat: true
"""


def write_tiny_cases(folder):
    path = folder / "tiny_cases.yaml"
    path.write_text(TINY_CASES)
    return path
