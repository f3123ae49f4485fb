import os
import re


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs():
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    sol, batch = namespace["sol"], namespace["batch"]
    assert sol.ys.shape == (61, 64, 3) and batch.shape == (8, 64, 3)
    assert float(namespace["sj"].Sphere().violation(sol.ys)) < 1e-12
