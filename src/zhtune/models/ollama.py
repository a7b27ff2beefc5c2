"""An Ollama ``Modelfile`` for an exported GGUF: the family's chat format and stop strings.

Ollama's templates are Go templates, not Jinja. Rather than translate each family's Jinja by hand,
the template is the family's own prompt rendered once with markers in place of the system prompt and
the user's message (``zhtune.models.families.format_prompt``, the function training and evaluation
use), and the markers replaced by Ollama's ``{{ .System }}`` and ``{{ .Prompt }}``. So Ollama sends
the model, turn for turn, the text zhtune trained it on.
"""
from __future__ import annotations

from typing import Any

from zhtune.models.families import ModelFamily, format_prompt, stop_strings
from zhtune.models.gguf_vocab import adds_special_tokens

SYSTEM_MARK = "\x00ZHTUNE_SYSTEM\x00"
PROMPT_MARK = "\x00ZHTUNE_PROMPT\x00"


def _go_literal(text: str) -> str:
    # "{{" would open an action in a Go template; emit it through one.
    return text.replace("{{", '{{ "{{" }}')


def _template_part(tokenizer: Any, family: ModelFamily, system: str | None) -> str:
    text = format_prompt(tokenizer, family, PROMPT_MARK, system=system)
    # Where the tokenizer adds BOS itself, so do llama.cpp and Ollama (tokenizer.ggml.add_bos_token);
    # a template that also writes it as text ("<s>[INST] ...") would give the model two. (SmolLM2's
    # "BOS" is <|im_start|>, which it never adds: there the text is the chat format and stays.)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and adds_special_tokens(tokenizer)["bos"]:
        text = text[len(bos):]
    out = _go_literal(text).replace(PROMPT_MARK, "{{ .Prompt }}")
    return out.replace(SYSTEM_MARK, "{{ .System }}")


def ollama_template(tokenizer: Any, family: ModelFamily) -> str:
    """The Go template: with a system prompt where the format has a place for one."""
    with_system = _template_part(tokenizer, family, SYSTEM_MARK)
    without = _template_part(tokenizer, family, None)
    if "{{ .System }}" not in with_system or with_system == without:
        return without  # the format has no system prompt (plain instruction template)
    return "{{ if .System }}" + with_system + "{{ else }}" + without + "{{ end }}"


def render_ollama_template(template: str, prompt: str, system: str | None = None) -> str:
    """What Ollama sends for one user message, for the templates ``ollama_template`` writes (tests
    and ``zhtune export`` use it to check a Modelfile against ``format_prompt``)."""
    if template.startswith("{{ if .System }}"):
        with_system, without = template[len("{{ if .System }}"):-len("{{ end }}")].split("{{ else }}", 1)
        template = with_system if system else without
    text = template.replace("{{ .Prompt }}", prompt).replace("{{ .System }}", system or "")
    return text.replace('{{ "{{" }}', "{{")


def modelfile(from_path: str, tokenizer: Any, family: ModelFamily, adapter_path: str | None = None) -> str:
    """The Modelfile text: FROM the GGUF (and ADAPTER), TEMPLATE and one PARAMETER stop per string."""
    template = ollama_template(tokenizer, family)
    if '"""' in template:
        raise ValueError('the chat template contains """, which a Modelfile cannot quote')
    lines = [f"# Written by zhtune export. Family: {family.name} ({family.description}).",
             f"FROM {from_path}"]
    if adapter_path:
        lines.append(f"ADAPTER {adapter_path}")
    lines.append(f'TEMPLATE """{template}"""')
    for stop in stop_strings(tokenizer, family):
        lines.append(f"PARAMETER stop {_quote(stop)}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
