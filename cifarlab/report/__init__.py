"""What people see: console lines, tables and progress (``console``), pictures (``plots``) and the evaluation
result they show (``metrics``). Imports data (class names) and the ground floor only; no torch at import."""
