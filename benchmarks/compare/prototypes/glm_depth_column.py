import sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from harness import *
for d in ["151675", "151676"]:
    for npc in [30, 15]:
        D = load(d, "_glm"); ld = np.log(D["depth"]); ld = (ld - ld.mean()) / ld.std()
        X = smooth(np.hstack([D["pcs"][:, :npc], ld[:, None]]), D["nb"])
        out = [score(D, gmm(X, int(D["K"]), s)[0])[0] for s in range(3)]
        print(d, npc, np.round(out, 3), flush=True)
