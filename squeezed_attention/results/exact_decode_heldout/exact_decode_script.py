"""Ad hoc: the first N decode steps attend every context key exactly (as the prompt's exact tail), then the usual
per-step selection with followed keys. N from EXACT_DECODE. Runs `squeeze context eval` with the patch."""
import os, sys
import torch
from squeezed_attention import context_attention as CA
N = int(os.environ.get("EXACT_DECODE", "0"))
orig = CA.SqueezedContext.attend
def attend(self, layer, queries):
    steps = self.__dict__.setdefault("_decode_steps", {})
    if layer in self._prompted and queries.shape[1] == 1 and self.spec.decode_selection != "question":
        n = steps.get(layer, 0)
        steps[layer] = n + 1
        if n < N:
            out, lse = self._attend_exact(layer, queries)
            if self.spec.follow_keys:
                self._point(layer, queries[:, -1:], lse[:, -1:], None, None)
            return out, lse
    return orig(self, layer, queries)
CA.SqueezedContext.attend = attend
from export.cli import main
sys.exit(main(sys.argv[1:]))
