"""Training data made from documents by a generator model: `tunehouse data synth` and `data augment`.

documents.py reads files into text; chunking.py cuts passages sized in the generator's tokens;
prompts.py holds the few-shot templates and replies.py reads what comes back; client.py asks any
OpenAI-compatible endpoint with bounded retries, through cache.py so nothing is asked twice;
curation.py decides what is kept and tally.py counts every drop by reason; pipeline.py and
augment.py are the two commands' runs, work.py their threads, output.py their files.
"""

from tunehouse.data.synth.augment import AugmentOptions, AugmentReport, augment
from tunehouse.data.synth.cache import ReplyCache
from tunehouse.data.synth.client import DEFAULT_BASE_URL, Endpoint, Sampling
from tunehouse.data.synth.output import ExampleFormat, provenance_path
from tunehouse.data.synth.pipeline import SynthOptions, SynthReport, synthesize
from tunehouse.data.synth.prompts import DEFAULT_PROMPTS, load_prompts, prompts_toml

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_PROMPTS",
    "AugmentOptions",
    "AugmentReport",
    "Endpoint",
    "ExampleFormat",
    "ReplyCache",
    "Sampling",
    "SynthOptions",
    "SynthReport",
    "augment",
    "load_prompts",
    "prompts_toml",
    "provenance_path",
    "synthesize",
]
