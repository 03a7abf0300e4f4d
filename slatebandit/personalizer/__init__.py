"""Personalizer-compatible loops: the caller supplies the actions, slatebandit explores, logs
exact probabilities, learns and evaluates (``server.personalizer`` speaks Azure AI
Personalizer's REST API over them).

    features       Personalizer's JSON features as VW text
    configuration  a loop's service and policy configuration, validated
    requests       rank and reward bodies, validated with Personalizer's limits
    events         one logged event: actions, slots, picks and their probabilities
    loops          the serving side of every loop: configuration and model, ranking
    learner        each loop's learner, exactly once per event
    evaluation     offline evaluations of other policies on a loop's log
"""
