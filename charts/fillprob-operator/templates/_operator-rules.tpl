{{/* The operator's own alerts (PrometheusRule group fillprob-operator). None carries a
`fillprob_rollout` label, so none is routed to the operator's receiver: they page people, they
never roll anything back. `{{` `}}` inside annotations is Prometheus templating, passed through. */}}

{{- define "fillprob-operator.upSelector" -}}
{{- default (printf "job=%q,namespace=%q" (include "fillprob-operator.fullname" .) .Release.Namespace) .Values.prometheusRule.operatorAlerts.upSelector -}}
{{- end -}}

{{- define "fillprob-operator.operatorRuleGroup" -}}
{{- $a := .Values.prometheusRule.operatorAlerts -}}
{{- $extra := $a.labels | default dict -}}
{{- if or (hasKey $extra "fillprob_rollout") (hasKey $extra "rollback") -}}
{{- fail "prometheusRule.operatorAlerts.labels must not set fillprob_rollout or rollback: the operator's receiver would act on these alerts" -}}
{{- end -}}
- name: fillprob-operator
  rules:
    - alert: FillProbOperatorDown
      expr: absent(up{ {{- include "fillprob-operator.upSelector" . -}} } == 1)
      for: {{ $a.downFor }}
      labels:
        {{- toYaml (merge (deepCopy $extra) (dict "severity" "critical" "namespace" .Release.Namespace)) | nindent 8 }}
      annotations:
        summary: "fillprob-operator {{ .Release.Namespace }}/{{ include "fillprob-operator.fullname" . }}: no replica up for {{ $a.downFor }}"
        description: >-
          No up{ {{- include "fillprob-operator.upSelector" . -}} } == 1 series: nothing walks or guards the
          FillProbRollouts (no gates, no rollbacks, the Alertmanager receiver is gone too).
    - alert: FillProbRolloutHaltedOrRolledBack
      expr: max by (namespace, name, state) (fillprob_rollout_info{state=~"Halted|RolledBack"}) == 1
      for: {{ $a.haltedFor }}
      labels:
        {{- toYaml (merge (deepCopy $extra) (dict "severity" "warning")) | nindent 8 }}
      annotations:
        summary: {{`"FillProbRollout {{ $labels.namespace }}/{{ $labels.name }} `}}{{ `{{ $labels.state }}` }} for more than {{ $a.haltedFor }}"
        description: >-
          It waits for a person: read status.lastRollback and status.history
          (kubectl fillprob status), fix or accept the cause, then change the spec to re-arm it.
    - alert: FillProbRolloutMetricsUnavailable
      expr: max by (namespace, name) (fillprob_rollout_condition{type="MetricsAvailable", status="False"}) == 1
      for: {{ $a.metricsUnavailableFor }}
      labels:
        {{- toYaml (merge (deepCopy $extra) (dict "severity" "warning")) | nindent 8 }}
      annotations:
        summary: {{`"FillProbRollout {{ $labels.namespace }}/{{ $labels.name }}`}}: MetricsAvailable=False for more than {{ $a.metricsUnavailableFor }}"
        description: >-
          The gates get no data for the grinder pods: the observation window is on hold and a
          Passed step is not guarded. The condition's message says which series are missing.
    - alert: FillProbRolloutNotEvaluated
      expr: |
        max by (namespace, name) (
          timestamp(fillprob_rollout_last_evaluation_timestamp_seconds) - fillprob_rollout_last_evaluation_timestamp_seconds
        )
        > on (namespace, name)
        {{ int $a.notEvaluatedIntervals }} * max by (namespace, name) (fillprob_rollout_evaluation_interval_seconds)
      for: {{ $a.notEvaluatedFor }}
      labels:
        {{- toYaml (merge (deepCopy $extra) (dict "severity" "critical")) | nindent 8 }}
      annotations:
        summary: {{`"FillProbRollout {{ $labels.namespace }}/{{ $labels.name }} not evaluated for {{ $value | humanizeDuration }}"`}}
        description: >-
          The operator runs but has not finished an evaluation of this rollout for more than
          {{ int $a.notEvaluatedIntervals }} of its spec.prometheus.interval: it is not guarded
          (look for event=tick_failed in the operator's log).
{{- end -}}
