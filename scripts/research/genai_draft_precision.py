"""Does openvino-genai's speculative decoding gain from a draft in f32, as ours does (docs/draft-precision.md)?

    python scripts/research/genai_draft_precision.py EXPORT_DIR [--draft draft-int4_sym] [--prompts humaneval:100-107]

genai's target ← draft pipeline twice, the draft compiled in bf16 and in f32 (target in bf16 in both), the
two taking turns prompt by prompt; 128 new tokens, greedy, genai's default 5 draft tokens. Answers whether the benchmark's
genai row should run its draft in f32 too.
"""

import argparse

from specqd.runtime.pipeline import ExportFolder
from specqd.runtime.tools import prompts
from specqd.runtime.tools.genai_engine import GenAIConfig, GenAIEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--draft", default="draft-int4_sym")
    parser.add_argument("--prompts", default="humaneval:100-107")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    folder = ExportFolder(args.out_dir)
    target, draft = (folder.path / folder.manifest.level(name).path for name in ("target", args.draft))
    texts = [folder.encode(text) for text in prompts.load(args.prompts)]
    engines = {precision: GenAIEngine(GenAIConfig(target=target, draft=draft, draft_precision=precision))
               for precision in ("bf16", "f32")}  # two copies of the models: about 8 GB
    tokens, seconds, outputs = dict.fromkeys(engines, 0), dict.fromkeys(engines, 0.0), {p: [] for p in engines}
    for engine in engines.values():
        engine.generate(texts[0], max_new_tokens=8)  # warm-up
    for ids in texts:
        for precision, engine in engines.items():
            result = engine.generate(ids, max_new_tokens=args.max_new_tokens)
            tokens[precision] += len(result.tokens)
            seconds[precision] += result.seconds
            outputs[precision].append(result.tokens)
    speed = {precision: tokens[precision] / seconds[precision] for precision in tokens}
    print(f"genai target <- {args.draft}, {len(texts)} prompts ({args.prompts}) x {args.max_new_tokens} tokens: "
          f"draft in bf16 {speed['bf16']:.2f} tok/s, in f32 {speed['f32']:.2f} tok/s "
          f"({speed['f32'] / speed['bf16']:.3f}x); same tokens: {outputs['bf16'] == outputs['f32']}")


if __name__ == "__main__":
    main()
