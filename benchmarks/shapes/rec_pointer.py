"""A supervised pointer for REC: one attention head of the language model is taught to look at the referred object.

REC stays at chance with the answer loss alone: the answers are well-formed boxes at the wrong place, the answer loss
hardly depends on the image, and the model has to find by itself which image tokens hold the object the question
names before it can copy where that object is. This auxiliary loss supervises that step directly. For every answer
position that predicts a digit of a single-box answer ("The blue star [123, 456, 789, 999]."), the chosen head's
attention over the global view's image tokens should fall on the patches whose centres lie inside that box: the loss is
`-log(attention mass on those patches)`, averaged over such positions. The answer's own box is the target, so the loss
needs nothing but the tokenized conversation; the dense loss's box term (`--aux-box-weight`) meanwhile makes each
object patch's features carry its box's digits, which the pointed-at head can then copy. `readout_loss` optionally
supervises that copy: a linear read-out of the head's output must give the box's digits.

The global view is the whole image stretched to the tower's square input (`FerretImageProcessor`), so patch `(row,
col)` of its `grid x grid` tokens has its centre at `((col + 0.5) / grid, (row + 0.5) / grid)` of the image, i.e. at
`1000 * (col + 0.5) / grid` on the 0..999 grid of the answer text. Its tokens are the first `grid * grid` `<image>`
tokens of each sample (Ferret-v2 puts the merged tile map after them).
"""

import re
from typing import NamedTuple

import torch

BOX_PATTERN = re.compile(r"\[(\d+), (\d+), (\d+), (\d+)\]")


def digit_token_ids(tokenizer) -> torch.Tensor:
    """Ids of the tokens that decode to exactly one digit (with or without a leading space)."""
    vocab = tokenizer.get_vocab()
    return torch.tensor(sorted(i for i in vocab.values() if tokenizer.decode([i]).strip() in set("0123456789")))


def box_patch_mask(box: tuple[int, int, int, int], grid: int) -> torch.Tensor:
    """`[grid * grid]` bool, row-major: the patches whose centres lie inside `box` (x1, y1, x2, y2 on the 0..999 grid);
    the patch under the box centre when no centre does (objects smaller than a patch)."""
    x1, y1, x2, y2 = box
    centres = (torch.arange(grid) + 0.5) * 1000 / grid
    inside = ((centres >= y1) & (centres <= y2))[:, None] & ((centres >= x1) & (centres <= x2))[None, :]
    if not inside.any():
        row = min(int((y1 + y2) / 2 * grid / 1000), grid - 1)
        col = min(int((x1 + x2) / 2 * grid / 1000), grid - 1)
        inside[row, col] = True
    return inside.flatten()


def answer_runs(labels: torch.Tensor) -> list[tuple[int, int]]:
    """`[seq]` labels -> `(start, end)` of each contiguous run of supervised tokens (labels != -100)."""
    supervised = torch.cat([torch.tensor([False]), labels != -100, torch.tensor([False])]).int()
    edges = supervised.diff()
    return list(zip((edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()))


class PointerTargets(NamedTuple):
    """What `pointer_targets` returns; `seq` is the padded sequence length."""

    targets: torch.Tensor  # [batch, seq, seq] bool: per digit query, the global patches inside the answer box
    query_boxes: torch.Tensor  # [batch, seq, 4] long: that box on the 0..999 grid at each digit query, -1 elsewhere
    first_queries: torch.Tensor  # [batch, seq] bool: each answer's first digit query (the position of "[")
    name_targets: torch.Tensor  # [batch, seq, seq] bool: the same patches for the answer's name tokens before "["


def pointer_targets(input_ids: torch.Tensor, labels: torch.Tensor, tokenizer, image_token_id: int, grid: int,
                    digit_ids: torch.Tensor | None = None) -> PointerTargets:  # fmt: skip
    """
    For each query position that predicts a digit of a single-box answer: the key positions of the global-view image
    tokens whose patch centres lie inside that box (`targets`), and that box (`query_boxes`); the first such query of
    each answer (`first_queries`, the one that predicts the box's first digit); and the same key positions for the
    answer's tokens between its first token and that first query (`name_targets`: "cyan" and "star" in "The cyan star
    [12, ..."). Answers with no box or several boxes, and samples with fewer than `grid * grid` image tokens, get no
    targets.

    The first query is where the object is chosen: it sees the question and the object's name, but no coordinate yet.
    Every later query has the coordinates written so far in its context, and a head can find the object from them
    without reading the name (measured on the R6 run: 31 % of the pointer head's attention on the named object at the
    first digit, 73 % at the second, 93-98 % from the fifth on). The name tokens are where the name is at hand: in R6,
    linear probes read the named object's colour and shape from the colour token's state (87 / 85 % at layer 1's
    input) but not from the first digit query's (78 / 64 %; rec_choice.py).
    """
    digit_ids = digit_token_ids(tokenizer) if digit_ids is None else digit_ids
    batch, length = input_ids.shape
    targets = torch.zeros(batch, length, length, dtype=torch.bool)
    query_boxes = torch.full((batch, length, 4), -1, dtype=torch.long)
    first_queries = torch.zeros(batch, length, dtype=torch.bool)
    name_targets = torch.zeros(batch, length, length, dtype=torch.bool)
    ids, labels = input_ids.cpu(), labels.cpu()
    for b in range(batch):  # a handful of answers per sample; the tensors below are per answer
        image_positions = (ids[b] == image_token_id).nonzero().flatten()[: grid * grid]
        if len(image_positions) < grid * grid:
            continue
        for start, end in answer_runs(labels[b]):
            boxes = BOX_PATTERN.findall(tokenizer.decode(ids[b, start:end]))
            if len(boxes) != 1:
                continue
            box = tuple(int(value) for value in boxes[0])
            keys = image_positions[box_patch_mask(box, grid)]
            queries = start - 1 + torch.isin(ids[b, start:end], digit_ids).nonzero().flatten()
            targets[b, queries[:, None], keys[None, :]] = True
            query_boxes[b, queries] = torch.tensor(box)
            first_queries[b, queries[0]] = True
            name_targets[b, start + 1 : queries[0], keys] = True
    return PointerTargets(targets, query_boxes, first_queries, name_targets)


def pointer_loss(attention: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """
    `attention`: `[batch, seq, seq]` attention probabilities of one head; `targets`: `pointer_targets`. Mean over the
    query positions that have targets of `-log(attention mass on the target keys)`; 0 (with a graph) when none do.
    """
    queries = targets.any(-1)
    if not queries.any():
        return attention.sum() * 0.0
    mass = (attention.float() * targets.to(attention.device)).sum(-1)[queries.to(attention.device)]
    return -mass.clamp_min(1e-6).log().mean()


def readout_loss(head_output: torch.Tensor, query_boxes: torch.Tensor, readout: torch.nn.Linear) -> torch.Tensor:
    """
    Supervises what the pointer head brings back: `head_output` `[batch, seq, head_dim]` (the head's attention output
    before the output projection), read by `readout` (`head_dim -> 4 * 2 * 10`) at the query positions of
    `query_boxes` (`pointer_targets`), must give the hundreds and the tens digit of each box coordinate: the mean
    cross-entropy of those 8 digits. 0 (with a graph) where no position has a box.
    """
    queries = query_boxes[..., 0] >= 0
    if not queries.any():
        return head_output.sum() * 0.0
    boxes = query_boxes.to(head_output.device)[queries.to(head_output.device)]  # [queries, 4]
    digits = torch.stack([boxes // 100, boxes // 10 % 10], dim=-1)  # [queries, 4, 2]
    logits = readout(head_output[queries.to(head_output.device)].float()).unflatten(-1, (4, 2, 10))
    return torch.nn.functional.cross_entropy(logits.flatten(0, -2), digits.flatten())
