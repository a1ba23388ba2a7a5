"""GLUE as instructions (``--objective lm``): each task's wording and its label words.

An example becomes one user message stating the task and giving the sentence(s), and the label
becomes one word, the assistant's answer. Label words are in label-id order (the ids of
:data:`heterolora_core.training.data.TASKS`: MNLI entailment, neutral, contradiction; QNLI and RTE
entailment, not_entailment; the binary tasks 0, 1). The prediction of an example is the label word
with the highest summed log-likelihood as the answer (:mod:`heterolora_core.tasks.lm_scoring`), and
the task's own GLUE metric is computed from those predictions.

STS-B (a similarity score in [0, 5]) is regression and is not posed as instructions: label words
rank classes, they do not give a number; train it with ``--objective classify``.
"""
from __future__ import annotations

from dataclasses import dataclass

from heterolora_core.tasks.instructions import InstructionExample
from heterolora_core.training.data import Example


@dataclass(frozen=True)
class GluePrompt:
    """The instruction of one task; ``first`` / ``second`` name the two texts of a pair task."""

    instruction: str
    label_words: tuple[str, ...]
    first: str = "Sentence"
    second: str | None = None


GLUE_PROMPTS: dict[str, GluePrompt] = {
    "cola": GluePrompt("Is the following sentence grammatically acceptable English? Answer yes or no.",
                       ("no", "yes")),
    "sst2": GluePrompt("Is the sentiment of the following sentence positive or negative? Answer positive or negative.",
                       ("negative", "positive")),
    "mrpc": GluePrompt("Do these two sentences mean the same thing? Answer yes or no.", ("no", "yes"),
                       "Sentence 1", "Sentence 2"),
    "qqp": GluePrompt("Do these two questions ask the same thing? Answer yes or no.", ("no", "yes"),
                      "Question 1", "Question 2"),
    "mnli": GluePrompt("Does the premise entail the hypothesis? Answer yes, maybe or no.", ("yes", "maybe", "no"),
                       "Premise", "Hypothesis"),
    "qnli": GluePrompt("Does the sentence contain the answer to the question? Answer yes or no.", ("yes", "no"),
                       "Question", "Sentence"),
    "rte": GluePrompt("Does the first sentence entail the second? Answer yes or no.", ("yes", "no"),
                      "Sentence 1", "Sentence 2"),
    "wnli": GluePrompt("Does the first sentence entail the second? Answer yes or no.", ("no", "yes"),
                       "Sentence 1", "Sentence 2"),
}


def glue_instruction(task: str, example: Example, chat: bool) -> InstructionExample:
    """``example`` of GLUE ``task`` as an instruction whose choices are the label words.
    ``chat``: render with the chat template (else plain text ending in ``Answer:``)."""
    prompt = GLUE_PROMPTS[task]
    text = f"{prompt.instruction}\n{prompt.first}: {example.text}"
    if prompt.second is not None:
        text += f"\n{prompt.second}: {example.text_pair}"
    words = prompt.label_words if chat else tuple(" " + w for w in prompt.label_words)
    if not chat:
        text += "\nAnswer:"
    answer = int(example.label)
    return InstructionExample((("user", text), ("assistant", words[answer])), chat, words, answer)
