import sys, json, random, math, torch
from squeezed_attention import testing
from squeezed_attention.suite import documents, split_items, _prose
from squeezed_attention.pack import BuildSettings, build_context_pack
from squeezed_attention.generation import AttentionChoice, Generator
from squeezed_attention.evaluate import continuation_metrics
from squeezed_attention import context_attention as CA
torch.set_num_threads(1)
MODE = {"m": "base"}
orig = CA.SqueezedContext._summaries
def patched(self, layer, q, kept_positions, valid, bias=None, logits=None):
    if MODE["m"] == "base":
        return orig(self, layer, q, kept_positions, valid, bias, logits)
    bias = self._summary_bias(layer, kept_positions, valid) if bias is None else bias
    first, Nc = self.first_position, self.num_clustered
    K = self.summary_keys[layer].float()            # [Hs, Kc, D]
    Kc = K.shape[1]
    keys = self.keys[layer][:, first:first + Nc].float()     # [Hs, Nc, D] positions
    vals = self.values[layer][:, first:first + Nc].float()
    lab = self.cluster_of[layer]                     # [Hs, Nc]
    M = torch.nn.functional.one_hot(lab, Kc).float()  # [Hs, Nc, Kc]
    s = self.scale * torch.bmm(q.float(), keys.transpose(1, 2))   # [Hs, R, Nc]
    m = s.amax(-1, keepdim=True)
    e = torch.exp(s - m)
    true_mass = torch.log(torch.bmm(e, M)) + m        # [Hs, R, Kc]
    cent = self.scale * torch.bmm(q.float(), K.transpose(1, 2))
    live = torch.isfinite(bias)[:, None, :]
    lc = self.summary_log_counts[layer][:, None, :]
    if MODE["m"] in ("mass", "both"):
        lg = torch.where(live, true_mass, torch.tensor(float("-inf")))
    else:
        lg = bias[:, None, :] + cent
    if MODE["m"] in ("value", "both"):
        wv = torch.einsum("hrn,hnk,hnd->hrkd", e, M, vals) / torch.bmm(e, M).clamp(min=1e-30)[..., None]
    else:
        wv = self.summary_values[layer].float()[:, None].expand(-1, q.shape[1], -1, -1)
    lse = torch.logsumexp(lg, -1)
    w = torch.exp(lg - lse[..., None]).nan_to_num_(0.0)
    out = torch.einsum("hrk,hrkd->hrd", w, wv)
    return out, lse
CA.SqueezedContext._summaries = patched
split, length, cases = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
model, ck = testing.real_model(), testing.real_checkpoint()
tok = ck.tokenizer; docs = documents(); T = 64
for ci in cases:
    rng = random.Random(f"{split}:continuation:{length}:1" + (f":{ci}" if ci else ""))
    paras, used = _prose(tok, docs, split_items(sorted(docs), split), length + T + 64, rng)
    ids = tok.encode("\n\n".join(paras)); n_ctx = length - T
    pack = build_context_pack(model, ck, tok.decode(ids[:n_ctx], skip_special=False), BuildSettings(framing="raw"))
    cont = tok.encode(tok.decode(ids[n_ctx:n_ctx + T + 8]))[:T]
    gen = Generator(model, tok, pack)
    MODE["m"] = "base"
    ref, _ = continuation_metrics(gen, AttentionChoice("full"), cont)
    row = {"case": ci, "source": used[0]}
    for mode in ["base", "mass", "value", "both"]:
        MODE["m"] = mode
        lp, m = continuation_metrics(gen, AttentionChoice("top-k", kv_budget=0.125, backend="torch"), cont, ref)
        row[mode] = (round(m["top1_agreement"] * m["scored_tokens"]), round(m["kl_mean"], 5))
    print(json.dumps(row), flush=True)
