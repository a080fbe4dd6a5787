package e2e

import (
	"fmt"
	"net/http"
	"sync"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	batchv1 "k8s.io/api/batch/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/kinfer/kinfer/internal/testutil"
)

var _ = Describe("A manager killed with requests in flight", func() {
	It("delivers every request after it restarts, and creates no Job twice", func() {
		const requests = 20
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, sleepModel(ns, "--delay=3s").Obj())).To(Succeed())
		receiver := testutil.NewReceiver()
		defer receiver.Close()

		// Every Job ever created in the namespace, by name: a Job created twice
		// shows up as a second UID under its name, even if the first is gone.
		jobs, err := clientset.BatchV1().Jobs(ns).Watch(ctx, metav1.ListOptions{})
		Expect(err).NotTo(HaveOccurred())
		var mu sync.Mutex
		created := map[string]map[types.UID]bool{}
		go func() {
			defer GinkgoRecover()
			for event := range jobs.ResultChan() {
				if job, ok := event.Object.(*batchv1.Job); ok && event.Type == watch.Added {
					mu.Lock()
					if created[job.Name] == nil {
						created[job.Name] = map[types.UID]bool{}
					}
					created[job.Name][job.UID] = true
					mu.Unlock()
				}
			}
		}()
		defer jobs.Stop()
		jobsCreated := func() int {
			mu.Lock()
			defer mu.Unlock()
			return len(created)
		}

		var wg sync.WaitGroup
		for i := range requests {
			wg.Go(func() {
				defer GinkgoRecover()
				code, answer := submit(ns, map[string]any{"id": fmt.Sprintf("r%02d", i), "callback_url": receiver.URL})
				Expect(code).To(Equal(http.StatusAccepted), "%v", answer)
			})
		}
		wg.Wait()

		By("killing the manager with SIGKILL once it has started Jobs, before any result is delivered")
		Eventually(jobsCreated, "30s", "20ms").Should(BeNumerically(">=", 1))
		manager.Kill()
		killedAt := jobsCreated()
		Expect(receiver.Calls()).To(BeEmpty(), "a callback came before the kill: the scenario did not test a kill in flight")
		GinkgoWriter.Printf("manager killed with %d of %d Jobs created\n", killedAt, requests)

		By("restarting it")
		startSuiteManager()

		Eventually(func() map[string][]map[string]any { return callbacks(receiver) }, "90s", "250ms").
			Should(HaveLen(requests))
		for id, bodies := range callbacks(receiver) {
			Expect(bodies[0]).To(HaveKeyWithValue("result", "OK"), "request %s", id)
		}
		mu.Lock()
		defer mu.Unlock()
		Expect(created).To(HaveLen(requests))
		for name, uids := range created {
			Expect(uids).To(HaveLen(1), "Job %s was created more than once", name)
		}
	})
})
