"""Ferret demo: ask about a free-form region of an image, ask for the locations of objects, draw the answer's boxes.

    python examples/demo.py                                   # a fresh synthetic scene and the shipped tiny model
    python examples/demo.py --image street.jpg --model ferret-7b --region 120,80,260,300 --question "What is <region>?"

With no `--model`, the demo loads the tiny checkpoint shipped in `examples/checkpoints/ferret-shapes-tiny` (trained on
synthetic shapes). If that folder is missing it falls back to a randomly initialised tiny model and says so: the
answers are then noise, but every step (processor, regions, sampler, generation, parsing, drawing) runs for real.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import transformers_ferret  # noqa: F401  (registers Ferret with the Auto classes)
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers_ferret.visualization import draw_annotations

SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "ferret-shapes-tiny"


def parse_region(text: str, image: Image.Image):
    """`x,y` (point), `x1,y1,x2,y2` (box) or a path to a mask image (free-form), in the image's pixels."""
    if Path(text).is_file():
        mask = np.asarray(Image.open(text).convert("L").resize(image.size)) > 127
        return mask
    values = [float(value) for value in text.split(",")]
    if len(values) not in (2, 4):
        raise ValueError(f"--region must be x,y or x1,y1,x2,y2 or a mask image path, got {text!r}.")
    return tuple(values)


def random_tiny_model_and_processor():
    """An untrained tiny Ferret with the shipped processor layout (used only when no checkpoint is available)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPVisionConfig, LlamaConfig, PreTrainedTokenizerFast

    from transformers_ferret import FerretConfig, FerretForConditionalGeneration, FerretImageProcessorPil, FerretProcessor

    words = "<unk> <s> </s> <region_fea> <image> a an the is and of at red green blue yellow purple orange circle square " \
            "triangle star hexagon cross [ ] , 0 1 2 3 4 5 6 7 8 9 what where object ? .".split()  # fmt: skip
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
                                                     pre_tokenizers.Digits(individual_digits=True)])  # fmt: skip
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<unk>", extra_special_tokens={"image_token": "<image>"})  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": ["<region_fea>", "<image>"]})
    torch.manual_seed(0)
    config = FerretConfig(
        vision_config=CLIPVisionConfig(image_size=112, patch_size=16, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4).to_dict(),  # fmt: skip
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, bos_token_id=1, eos_token_id=2, pad_token_id=0).to_dict(),  # fmt: skip
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        region_token_index=tokenizer.convert_tokens_to_ids("<region_fea>"),
        sampler_num_init_points=64, sampler_num_sub_points=[16, 8], sampler_num_neighbors=[8, 8],
    )  # fmt: skip
    model = FerretForConditionalGeneration(config).eval()
    model.generation_config.suppress_tokens = [config.image_token_id]
    processor = FerretProcessor(image_processor=FerretImageProcessorPil(size={"height": 112, "width": 112}),
                                tokenizer=tokenizer, patch_size=16, num_region_points=64)  # fmt: skip
    return model, processor


def synthetic_scene(seed: int):
    """A generated scene and the free-form mask of one of its objects."""
    from transformers_ferret.synthetic_shapes import generate_scene

    scene = generate_scene(  # the shipped model's training scenes (benchmarks/shapes/recipe.py SCENE_KWARGS)
        np.random.default_rng(seed), num_objects=(3, 5), min_side=160, max_side=320, object_size=(40, 110)
    )
    target = scene.objects[0]
    return scene.image, target.mask, target.name


def ask(model, processor, image, question, regions, max_new_tokens):
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"regions": [regions]},
    )  # fmt: skip
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    answer = processor.post_process_image_text_to_text(output[:, inputs["input_ids"].shape[1] :])[0].strip()
    return answer, processor.post_process_grounding(answer, image_sizes=[(image.height, image.width)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="converted Ferret folder or Hub id (default: the shipped tiny checkpoint)")
    parser.add_argument("--image", help="image file (default: a generated synthetic scene)")
    parser.add_argument("--region", help="x,y | x1,y1,x2,y2 | mask image path, in the image's pixels")
    parser.add_argument("--question", default="What is the object <region>?", help="refer with <region>")
    parser.add_argument("--grounding-question",
                        help="default: 'Where is the <referred object>?' on a synthetic scene (the shipped model's "
                             "training prompt), else 'What objects are in the image? Include their locations.'")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 10_000)
    parser.add_argument("--output", default="ferret_demo.png")
    parser.add_argument("--scale", type=int, default=0,
                        help="upscale the saved picture by this integer factor (default: enough for a short side of "
                             "at least 480 px, so that the outlines and labels stay thin on a small scene)")  # fmt: skip
    args = parser.parse_args(argv)

    if args.model:
        model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
        processor = AutoProcessor.from_pretrained(args.model)
    elif SHIPPED_CHECKPOINT.is_dir():
        model = AutoModelForImageTextToText.from_pretrained(SHIPPED_CHECKPOINT).eval()
        processor = AutoProcessor.from_pretrained(SHIPPED_CHECKPOINT)
    else:
        print("No shipped checkpoint found: using an UNTRAINED tiny Ferret, so the answers below are noise.")
        model, processor = random_tiny_model_and_processor()

    if args.image:
        image = Image.open(args.image).convert("RGB")
        region = parse_region(args.region, image) if args.region else (0, 0, image.width - 1, image.height - 1)
        truth = None
    else:
        image, region, truth = synthetic_scene(args.seed)
        print(f"Scene {args.seed}: {image.width}x{image.height}, the referred free-form region is the {truth}.")

    if args.grounding_question is None:
        args.grounding_question = f"Where is the {truth}?" if truth else "What objects are in the image? Include their locations."
    started = time.perf_counter()
    answer, _ = ask(model, processor, image, args.question, [region], args.max_new_tokens)
    print(f"Q: {args.question.replace('<region>', '<region 0>')}\nA: {answer}")
    grounding_answer, grounded = ask(model, processor, image, args.grounding_question, [], args.max_new_tokens)
    print(f"Q: {args.grounding_question}\nA: {grounding_answer}")
    for entity in grounded["entities"]:
        print(f"   {entity['phrase']!r} -> box {entity['box']} (pixels)")
    scale = args.scale or max(1, -(-480 // min(image.size)))
    annotated = draw_annotations(
        image, [region], grounded["entities"], region_labels=["region 0"], width=scale + 1, scale=scale
    )
    annotated.save(args.output)
    print(f"Saved {args.output} ({time.perf_counter() - started:.1f} s for both answers).")


if __name__ == "__main__":
    main()
