# Sourced by every egs/<corpus>/vgs1/{run.sh,local/data.sh}; each recipe's path.sh is a link to this file.
# Sets ${recipe}: the installed espnet_recipes package, else this checkout's (a recipe run from the source tree).
recipe=$(python3 -c 'import espnet_recipes, os; print(os.path.dirname(espnet_recipes.__file__))' 2>/dev/null || echo ../../../espnet_recipes)
