"""Chat templates: messages → the prompt string each profile's model was trained on.

Client-side and dependency-light (jinja2; a tokenizer only when the caller passes one for the token-level
injection check).
"""

from koserve.chat.injection import PromptInjectionError, check_prompt, control_string_pattern, find_control_sequence
from koserve.chat.template import USE_DEFAULT, Message, RenderedPrompt, render_prompt, render_prompt_spans

__all__ = ["USE_DEFAULT", "Message", "PromptInjectionError", "RenderedPrompt", "check_prompt",
           "control_string_pattern", "find_control_sequence", "render_prompt", "render_prompt_spans"]
