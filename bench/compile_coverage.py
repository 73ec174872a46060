"""How much of TPOT's search space compiles: random pipelines from TPOT 1.1's default
("linear") classification search space, fitted on iris, kept when the pipeline itself can
predict the verification rows (as a served one must), then compiled as the trainer compiles
(``tpotserve_trainer.compiler.compile_pipeline``: converted and matched on the verification rows).

    .venv/bin/python -m bench.compile_coverage [N] [SEED]     # default 60 pipelines, seed 1; ~1-2 min

Prints each pipeline that did not compile with the first reason, then a JSON summary.
"""
import warnings, time, collections, sys, json
warnings.filterwarnings("ignore")
import numpy as np
from tpotserve.offline import disable_tpot_update_check
disable_tpot_update_check()
from tpot.config.template_search_spaces import get_template_search_spaces
from sklearn.datasets import load_iris
from tpotserve.model_meta import ModelMeta, Feature
from tpotserve_trainer.compiler import compile_pipeline
X, y = load_iris(return_X_y=True)
meta = ModelMeta(task="classification", classes=[0,1,2], features=[Feature(name=f"f{i}", min=float(X[:,i].min()), max=float(X[:,i].max())) for i in range(4)])
space = get_template_search_spaces("linear", classification=True, n_samples=150, n_features=4, n_classes=3, random_state=None)
rng = np.random.default_rng(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 60
ok = fitfail = 0; reasons = collections.Counter(); precisions = collections.Counter()
started = time.time()
for i in range(n):
    ind = space.generate(rng)
    try:
        p = ind.export_pipeline()
        p.fit(X, y)
        from tpotserve.compiled import verification_rows
        p.predict_proba(verification_rows(meta, p))  # one TPOT would keep and the API could serve
    except Exception as exc:
        fitfail += 1; continue
    raw, rec = compile_pipeline(p, meta)
    if raw is not None:
        ok += 1; precisions[rec["precision"]] += 1
    else:
        r = rec["reason"].split(";")[0][:160]; reasons[r] += 1
        print("NO:", " -> ".join(type(s).__name__ for _, s in p.steps), "|", r, flush=True)
fitted = n - fitfail
print(json.dumps({"drawn": n, "fitted": fitted, "compiled": ok, "share": round(ok / max(fitted, 1), 3), "precision": precisions, "seconds": round(time.time() - started)}))
for r, c in reasons.most_common(): print(c, r)
