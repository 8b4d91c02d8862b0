"""Janus's special tokens, spelled as DeepSeek's vocabulary spells them (full-width bars U+FF5C and
U+2581 for spaces in the sentence markers; the role tags are plain ASCII). Every module that needs
one takes it from here."""

BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
PAD = "<\uff5c\u2581pad\u2581\uff5c>"
IMAGE = "<image_placeholder>"  # one per image in a prompt; expanded to BOI + 576 x IMAGE + EOI
BOI = "<begin_of_image>"
EOI = "<end_of_image>"
USER, ASSISTANT = "<|User|>", "<|Assistant|>"  # Janus-Pro's roles ("pro" prompt style)
# In the order DeepSeek's Janus-Pro vocabulary appends them.
ALL = [BOS, EOS, PAD, IMAGE, "<patch_placeholder>", BOI, EOI,
       "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>", USER, ASSISTANT]
