"""Expands each package root into its subpackages, so a plain `pip install .` ships all of them."""

from setuptools import find_packages, setup

ROOTS = {
    "xpullm": "sdk",
    "xpullm.kernels": "kernels",
    "xpullm.integrations": "integrations",
    "xpullm.graphrag": "graphrag",
    "xpullm.apps": "apps",
}

packages, package_dir = [], {}
for name, folder in ROOTS.items():
    packages.append(name)
    package_dir[name] = folder
    for sub in find_packages(folder):
        packages.append(f"{name}.{sub}")
        package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
