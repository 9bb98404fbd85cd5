"""`calculate_output` of a multi grader: arithmetic over the sub-graders' scores, never `eval`.

What OpenAI documents: numbers, the graders' names, `+ - * /`, `**` or `^` for powers, parentheses,
and the functions min, max, abs, floor, ceil, exp, sqrt and log (natural). Everything is computed
in floats, so a huge power overflows at once instead of building a giant integer.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterable, Mapping

OPERATORS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}
FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": lambda x: float(math.floor(x)),
    "ceil": lambda x: float(math.ceil(x)),
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
VARIADIC = {"min", "max"}


class FormulaError(ValueError):
    """The formula is malformed, names what it may not, or cannot be computed (division by zero)."""


def parse(formula: str, names: Iterable[str]) -> ast.Expression:
    """The formula's syntax tree, checked: FormulaError says what is not allowed."""
    try:
        # `^` is how OpenAI's docs write a power; as `**` it also binds as a power does
        tree = ast.parse(formula.strip().replace("^", "**"), mode="eval")
    except SyntaxError as error:
        raise FormulaError(f"{formula!r} is not a formula: {error.msg}.") from None
    allowed = set(names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                raise FormulaError(f"{ast.unparse(node)!r}: the functions are {', '.join(FUNCTIONS)}.")
            if node.func.id not in VARIADIC and len(node.args) != 1:
                raise FormulaError(f"{node.func.id} takes one argument.")
            if not node.args:
                raise FormulaError(f"{node.func.id} needs at least one argument.")
        elif isinstance(node, ast.Name):
            if node.id not in allowed and node.id not in FUNCTIONS:
                raise FormulaError(
                    f"{node.id!r} is not a grader of this multi grader; its graders are {', '.join(sorted(allowed))}."
                )
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise FormulaError(f"{node.value!r}: a formula holds numbers only.")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in OPERATORS:
                raise FormulaError(f"{ast.unparse(node)!r}: the operators are + - * / and ** or ^.")
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub | ast.UAdd):
                raise FormulaError(f"{ast.unparse(node)!r}: only - and + may stand before a value.")
        elif not isinstance(node, ast.Expression | ast.Load | ast.operator | ast.unaryop):
            raise FormulaError(f"{ast.unparse(node)!r} is not allowed in a formula.")
    return tree


def evaluate(formula: str, values: Mapping[str, float]) -> float:
    """`formula` computed with `values` for its names; FormulaError if it cannot be."""
    tree = parse(formula, values)

    def value(node: ast.expr) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):  # parse() allowed no other
            return float(node.value)
        if isinstance(node, ast.Name):
            return float(values[node.id])
        if isinstance(node, ast.UnaryOp):
            operand = value(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            return OPERATORS[type(node.op)](value(node.left), value(node.right))
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)  # parse() allowed nothing else
        return float(FUNCTIONS[node.func.id](*(value(arg) for arg in node.args)))

    try:
        result = value(tree.body)
    except (ArithmeticError, ValueError, TypeError) as error:  # x/0, overflow, log(-1), (-1)**0.5
        raise FormulaError(f"{formula!r} cannot be computed with {dict(values)}: {error}.") from None
    if isinstance(result, complex) or not math.isfinite(result):
        raise FormulaError(f"{formula!r} with {dict(values)} is {result}, not a finite score.")
    return result
