package jobstate

import (
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
)

func TestFinal(t *testing.T) {
	condition := func(t batchv1.JobConditionType, s corev1.ConditionStatus) batchv1.JobCondition {
		return batchv1.JobCondition{Type: t, Status: s}
	}
	for _, tc := range []struct {
		name       string
		conditions []batchv1.JobCondition
		want       batchv1.JobConditionType // "" for not over
	}{
		{name: "running"},
		{name: "complete", conditions: []batchv1.JobCondition{
			condition(batchv1.JobSuccessCriteriaMet, corev1.ConditionTrue), condition(batchv1.JobComplete, corev1.ConditionTrue)}, want: batchv1.JobComplete},
		{name: "failed", conditions: []batchv1.JobCondition{
			condition(batchv1.JobFailureTarget, corev1.ConditionTrue), condition(batchv1.JobFailed, corev1.ConditionTrue)}, want: batchv1.JobFailed},
		{name: "pods still terminating", conditions: []batchv1.JobCondition{
			condition(batchv1.JobSuccessCriteriaMet, corev1.ConditionTrue), condition(batchv1.JobFailureTarget, corev1.ConditionTrue)}},
		{name: "false is not over", conditions: []batchv1.JobCondition{condition(batchv1.JobFailed, corev1.ConditionFalse)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got batchv1.JobConditionType
			if c := Final(&batchv1.Job{Status: batchv1.JobStatus{Conditions: tc.conditions}}); c != nil {
				got = c.Type
			}
			if got != tc.want {
				t.Errorf("Final = %q, want %q", got, tc.want)
			}
		})
	}
}
