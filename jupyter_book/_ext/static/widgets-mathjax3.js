/*
 * Bridge from the Jupyter widget manager to MathJax 3.
 *
 * @jupyter-widgets/html-manager 1.x (the JavaScript that renders saved widgets
 * in the book) typesets widget labels with MathJax 2's API,
 * `MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])`, whenever
 * `window.MathJax` exists. The book loads MathJax 3, which has no `Hub`, so
 * every widget with a description would throw a TypeError. This file, loaded
 * before the widget manager, gives whatever object `window.MathJax` holds
 * (MathJax's configuration first, MathJax 3 itself once it loads) a hidden
 * `Hub.Queue` that hands the element to MathJax 3's `typesetPromise`.
 */
(function () {
  "use strict";

  function typeset(element) {
    const mj = window.MathJax;
    if (!element || !mj || !mj.startup || !mj.startup.promise || !mj.typesetPromise) {
      return; // MathJax not started yet: its first pass covers the page anyway
    }
    mj.startup.promise
      .then(function () { return mj.typesetPromise([element]); })
      .catch(function (err) { console.warn("MathJax could not typeset a widget label:", err); });
  }

  const hub = {
    Queue: function () {
      for (let i = 0; i < arguments.length; i++) {
        const job = arguments[i];
        if (Array.isArray(job) && job[0] === "Typeset") {
          typeset(job[2]);
        }
      }
    },
  };

  function bridge(mj) {
    if (mj && typeof mj === "object" && !("Hub" in mj)) {
      // Not enumerable: MathJax 3 reads its configuration with Object.keys.
      Object.defineProperty(mj, "Hub", { value: hub, configurable: true, enumerable: false });
    }
  }

  let current = window.MathJax;
  bridge(current);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    enumerable: true,
    get: function () { return current; },
    set: function (value) { current = value; bridge(value); },
  });
})();
