"""The physics-informed network for u'' + u = 0 on [0, π/2], u(0) = 0, u(π/2) = 1 (exact: sin x).

    python stages/pinn.py --params params.yaml --model models/pinn.pt --reports reports/pinn

`params` is the stage's section, `problem` states the ODE as named pieces, `solver` trains the
network (Adam, L-BFGS, Levenberg-Marquardt), `outputs` checks it against sin x and writes the model
and reports.
"""
