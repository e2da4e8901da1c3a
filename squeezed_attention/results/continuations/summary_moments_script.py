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
STATS = {}
def stats(self, layer):
    key = (id(self), layer)
    if key in STATS: return STATS[key]
    first, Nc = self.first_position, self.num_clustered
    C = self.summary_keys[layer].float(); Kc = C.shape[1]
    keys = self.keys[layer][:, first:first + Nc].float(); vals = self.values[layer][:, first:first + Nc].float()
    lab = self.cluster_of[layer]
    M = torch.nn.functional.one_hot(lab, Kc).float()           # [Hs,Nc,Kc]
    cnt = M.sum(1).clamp(min=1)                                 # [Hs,Kc]
    dk = keys - torch.gather(C, 1, lab[..., None].expand(-1, -1, C.shape[2]))   # k - c
    vbar = self.summary_values[layer].float()
    dv = vals - torch.gather(vbar, 1, lab[..., None].expand(-1, -1, C.shape[2]))
    var_diag = torch.einsum("hnk,hnd->hkd", M, dk * dk) / cnt[..., None]          # [Hs,Kc,D]
    cov = torch.einsum("hnk,hnd,hne->hkde", M, dk, dk) / cnt[..., None, None]     # [Hs,Kc,D,D]
    cvk = torch.einsum("hnk,hnd,hne->hkde", M, dv, dk) / cnt[..., None, None]     # [Hs,Kc,D(v),D(k)]
    STATS[key] = (var_diag, cov, cvk)
    return STATS[key]
def patched(self, layer, q, kept_positions, valid, bias=None, logits=None):
    mode = MODE["m"]
    if mode == "base":
        return orig(self, layer, q, kept_positions, valid, bias, logits)
    bias = self._summary_bias(layer, kept_positions, valid) if bias is None else bias
    var_diag, cov, cvk = stats(self, layer)
    C = self.summary_keys[layer].float()
    qs = q.float() * self.scale
    lg = bias[:, None, :] + torch.bmm(qs, C.transpose(1, 2))          # [Hs,R,Kc]
    if "iso" in mode:
        lg = lg + 0.5 * var_diag.mean(-1)[:, None, :] * (qs * qs).sum(-1, keepdim=True)
    if "diag" in mode:
        lg = lg + 0.5 * torch.einsum("hrd,hkd->hrk", qs * qs, var_diag)
    if "cov" in mode:
        lg = lg + 0.5 * torch.einsum("hrd,hkde,hre->hrk", qs, cov, qs)
    wv = self.summary_values[layer].float()[:, None].expand(-1, q.shape[1], -1, -1)
    if "rem" in mode:
        first = self.first_position
        lab = self.cluster_of[layer]
        kp = kept_positions - first
        ok = (kp >= 0) & (kp < lab.shape[1])
        if valid is not None: ok = ok & valid
        kpc = kp.clamp(0, lab.shape[1] - 1)
        kl = lab.gather(1, kpc)                                   # [Hs,B] clusters
        Kc = C.shape[1]; D = C.shape[2]
        n = torch.zeros(C.shape[0], Kc).scatter_add_(1, kl, ok.float())
        keys = self.keys[layer][:, first:].float(); vals = self.values[layer][:, first:].float()
        gk = keys.gather(1, kpc[..., None].expand(-1, -1, D)) * ok[..., None]
        gv = vals.gather(1, kpc[..., None].expand(-1, -1, D)) * ok[..., None]
        sk = torch.zeros_like(C).scatter_add_(1, kl[..., None].expand(-1, -1, D), gk)
        sv = torch.zeros_like(C).scatter_add_(1, kl[..., None].expand(-1, -1, D), gv)
        N = self.summary_log_counts[layer].exp()
        rest = (N - n).round()
        part = (n > 0) & (rest > 0.5)
        ck = torch.where(part[..., None], (N[..., None] * C - sk) / rest.clamp(min=1)[..., None], C)
        vb = self.summary_values[layer].float()
        cv = torch.where(part[..., None], (N[..., None] * vb - sv) / rest.clamp(min=1)[..., None], vb)
        b2 = torch.where(part, rest.clamp(min=1).log(), bias)
        lg = b2[:, None, :] + torch.bmm(qs, ck.transpose(1, 2))
        wv = cv[:, None].expand(-1, q.shape[1], -1, -1)
    if "vlin" in mode:
        wv = wv + torch.einsum("hkde,hre->hrkd", cvk, qs)
    lse = torch.logsumexp(lg, -1)
    w = torch.exp(lg - lse[..., None]).nan_to_num_(0.0)
    return torch.einsum("hrk,hrkd->hrd", w, wv), lse
CA.SqueezedContext._summaries = patched
split, length, cases = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
modes = sys.argv[4].split(",")
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
    for mode in modes:
        MODE["m"] = mode; STATS.clear()
        lp, m = continuation_metrics(gen, AttentionChoice("top-k", kv_budget=0.125, backend="torch"), cont, ref)
        row[mode] = (round(m["top1_agreement"] * m["scored_tokens"]), round(m["kl_mean"], 5))
        print(mode, row[mode], flush=True)
    print(json.dumps(row), flush=True)
