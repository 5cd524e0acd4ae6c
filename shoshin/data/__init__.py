"""Data: corpora and datasets in, token windows out (tokenizers, chat rendering, splits).

IGNORE_INDEX is the target that means "no loss here": the data writes it where a target is masked
(a prompt under an assistant-only loss, a window's overlap), the loss skips it.
"""

IGNORE_INDEX = -1
